"""Built-in volume representations (Fourier space)."""

from cryoforge.hookspecs import hookimpl
from cryoforge.volumes.fouriernet import FourierNet
from cryoforge.volumes.hashgrid import HashGridVolume
from cryoforge.volumes.relu_pe import ReluPEVolume
from cryoforge.volumes.siren import SirenVolume
from cryoforge.volumes.voxel import VoxelVolume


@hookimpl
def cryoforge_register_volumes() -> list[type]:
    return [FourierNet, SirenVolume, ReluPEVolume, VoxelVolume, HashGridVolume]
