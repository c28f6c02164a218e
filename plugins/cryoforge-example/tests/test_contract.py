"""The example plugin runs cryoforge's own contract checks on its component."""

from cryoforge_example import GaussianVolume

from cryoforge.testing import check_component


def test_gaussian_volume_contract(tmp_path):
    check_component("volume", GaussianVolume, tmp_path=tmp_path)
