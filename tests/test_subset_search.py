"""Search a subset, amortize, infer the rest, refine it: the path for many particles (scale issue).

The refinement is checked against the simulation's true poses: from poses a few degrees off
(as the encoder leaves them), the local search at full size against the searched particles' map
returns to the truth. The run test checks the stages' wiring: which particles each stage saw,
and that every particle ends with a pose.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cryoforge.config import RunConfig, apply_override, load_config_file
from cryoforge.engine.checkpoint import load_checkpoint
from cryoforge.engine.run import prepare, run
from cryoforge.engine.search import search_rows
from cryoforge.engine.search_scoring import full_size_sums, refine_locally
from cryoforge.errors import ConfigError
from cryoforge.io.star import read_star
from cryoforge.ops.rotations import geodesic_distance_deg, random_rotations, rotvec_to_matrix
from cryoforge.ops.symmetry import symmetric_reconstruction
from cryoforge.schedules.abinit import AbinitSchedule
from cryoforge.simulation.simulate import SimulationSettings, simulate
from cryoforge.types import BuildContext

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    """4AKE, 1,200 particles, L=32, 3 Å/px, CTF, no noise, origins σ = 2 px."""
    d = tmp_path_factory.mktemp("subset_case")
    simulate(
        None,
        d,
        SimulationSettings(
            n_particles=1200, snr=None, seed=5, defocus_median_angstrom=15000, shift_std_angstrom=6.0
        ),
    )
    return d


def _config(star: Path, out: Path, **over) -> RunConfig:
    c = load_config_file(ROOT / "examples" / "demo.toml")
    small = {
        "source.path": str(star),
        "output_dir": str(out),
        "encoder.channels": [8, 16],
        "encoder.head_hidden": [32],
        "volume.hidden_dim": 32,
        "schedule.fit_steps": 10,
        "schedule.amortize_steps": 20,
        "schedule.search": {"iterations": 4, "refine_steps_deg": [2.0]},
        "schedule.refine": {"refine_steps_deg": [2.0], "fit_steps": 5},
        "train.batch_size": 16,
        "train.tensorboard": False,
        "train.progress": False,
    }
    for k, v in {**small, **over}.items():
        c = apply_override(c, k, v)
    return c


def test_search_rows_are_a_seeded_sorted_subset_or_all():
    a = search_rows(1000, 300, seed=0)
    assert a is not None and len(a) == 300 and len(set(a.tolist())) == 300
    assert bool((a[1:] > a[:-1]).all()) and int(a.min()) >= 0 and int(a.max()) < 1000
    assert torch.equal(a, search_rows(1000, 300, seed=0))  # a resumed run searches the same particles
    assert not torch.equal(a, search_rows(1000, 300, seed=1))
    assert search_rows(1000, 1000, 0) is None and search_rows(1000, None, 0) is None


def _stages(**options) -> list:
    return AbinitSchedule(AbinitSchedule.Options(**options), BuildContext(32, 3.0)).stages()


def test_schedule_adds_infer_and_refine_only_with_an_encoder():
    stages = _stages()
    assert [s.name for s in stages] == ["search", "fit", "amortize", "infer", "refine"]
    assert stages[0].options["subset"] == AbinitSchedule.Options().subset
    sym = _stages(search={"symmetry": "D2", "whiten": True, "scale": True, "mask_diameter_angstrom": 90.0})
    # the refine stage scores as the search did: the group of its maps, whitening, contrast scale, mask
    copied = ("symmetry", "whiten", "scale", "mask_diameter_angstrom")
    assert {k: sym[-1].options[k] for k in copied} == {
        "symmetry": "D2",
        "whiten": True,
        "scale": True,
        "mask_diameter_angstrom": 90.0,
    }
    from cryoforge.engine.semi_amortized import RefineStageOptions

    RefineStageOptions.model_validate(sym[-1].options)  # every copied option is one of the stage's
    # its global check scores at the search's box, last band and grid
    real = _stages(search={"size": 24, "band_px": [4.0, 11.0], "directions": 500, "inplane": 30})[-1]
    assert {k: real.options[k] for k in ("global_size", "global_band_px", "directions", "inplane")} == {
        "global_size": 24,
        "global_band_px": 11.0,
        "directions": 500,
        "inplane": 30,
    }
    RefineStageOptions.model_validate(real.options)
    plain = _stages(amortize_steps=0)
    assert [s.name for s in plain] == ["search", "fit"] and "subset" not in plain[0].options
    with pytest.raises(ValueError, match="amortize_steps"):
        AbinitSchedule.Options(amortize_steps=0, search={"subset": 500})


def _truth(case: Path) -> tuple[SimpleNamespace, torch.Tensor, torch.Tensor]:
    """A light context over the case's particles, their true rotations and origins (px, 3 Å/px)."""
    _, _, source = prepare(_config(case / "particles.star", case / "unused"))
    truth = read_star(case / "particles.star")
    R = torch.as_tensor(truth.rotations, dtype=torch.float64)
    origin = torch.as_tensor(truth.shifts_angstrom, dtype=torch.float64) / 3.0
    return SimpleNamespace(source=source, index=np.arange(len(R))), R, origin


def test_refine_returns_poses_a_few_degrees_off_to_the_truth(case):
    """Half the particles at their true poses make the reference; the other half start 5° off
    (random axes) and ±1 px off: four local steps bring them back within the grid's reach."""
    ctx, R, origin = _truth(case)
    n = len(R)
    ref, moved = np.arange(0, n, 2), np.arange(1, n, 2)
    base = full_size_sums(ctx, R[ref], 400, origin[ref], ref)
    volume = symmetric_reconstruction(base, "C1", 0.1)
    gen = torch.Generator().manual_seed(0)
    axis = torch.nn.functional.normalize(
        torch.randn(len(moved), 3, generator=gen, dtype=torch.float64), dim=1
    )
    kick = rotvec_to_matrix(axis * np.deg2rad(5.0))
    start = kick @ R[moved]
    start_origin = origin[moved] + torch.where(torch.rand(len(moved), 2, generator=gen) < 0.5, -1.0, 1.0)
    assert float(geodesic_distance_deg(start, R[moved]).median()) == pytest.approx(5.0, abs=0.01)
    rot, org = start, start_origin
    for j, step in enumerate([4.0, 2.0, 1.0, 1.0]):
        rot, _, vol, org = refine_locally(
            ctx, rot, volume, step, 400, 0.1, org, 0.5 / 2**j if j < 2 else 0.25, "C1", moved, base
        )
        volume = vol
    err = geodesic_distance_deg(rot, R[moved])
    assert float(err.median()) <= 1.0, float(err.median())
    assert float((org - origin[moved]).norm(dim=1).median()) <= 0.3
    # the refinement's map holds both halves: the reference's sums were added, not replaced
    assert volume.abs().sum() > 0


def test_subset_run_poses_every_particle_and_fits_the_subset_first(case, tmp_path):
    """subset 600 of 1,200: the search poses 600, the encoder the other 600, the refine stage
    refines exactly those; poses.star has a pose for every particle."""
    cfg = _config(case / "particles.star", tmp_path / "run", **{"schedule.subset": 600})
    res = run(cfg)
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    stages = ck["state"]["stages"]
    pending = stages["infer"]["pending"]
    rows = search_rows(1200, 600, cfg.train.seed)
    assert rows is not None
    assert sorted(set(pending.tolist()) | set(rows.tolist())) == list(range(1200))
    assert len(pending) == 600 and stages["infer"]["done"] == 600
    assert stages["refine"]["refined"] == 1 and stages["refine.fit"]["step"] == 5
    assert "table_rows" not in ck["state"]  # every row holds a pose now
    walls = json.loads((tmp_path / "run" / "metrics.json").read_text())["stage_wall_s"]
    assert sorted(walls) == ["amortize", "fit", "infer", "refine", "search"]
    assert all(v > 0 for v in walls.values())
    poses = read_star(res.star_path)
    assert len(poses.rotations) == 1200
    # every pose was found by the search or the encoder: none is the random start any more
    start = random_rotations(1200, torch.Generator().manual_seed(cfg.train.seed)).double()
    moved = geodesic_distance_deg(torch.as_tensor(poses.rotations, dtype=torch.float64), start)
    assert float(moved.min()) > 0.5
    # the fit stage fitted the subset only: its batches (16 images) span 600 particles
    assert stages["fit"]["step"] == 10


def test_the_last_refine_step_refines_the_searched_particles_too(case, tmp_path):
    """``refine_searched``: the searched particles, posed against the subset's map, take the last
    step against the map of every particle. The inferred particles' poses do not depend on it."""
    from cryoforge.metrics.poses import pose_errors

    truth = read_star(case / "particles.star")
    out = {}
    for flag in (False, True):
        refine = {"refine_steps_deg": [2.0], "fit_steps": 5, "refine_searched": flag}
        cfg = _config(case / "particles.star", tmp_path / f"run{flag}", **{"schedule.subset": 600})
        cfg = apply_override(cfg, "schedule.refine", refine)
        out[flag] = read_star(run(cfg).star_path)
    rows = search_rows(1200, 600, cfg.train.seed)
    assert rows is not None
    s = np.zeros(1200, dtype=bool)
    s[rows.numpy()] = True
    a, b = (torch.as_tensor(out[f].rotations, dtype=torch.float64) for f in (False, True))
    assert torch.equal(a[~s], b[~s])
    assert float((geodesic_distance_deg(a[s], b[s]) > 0.1).float().mean()) > 0.2  # they took a step

    def searched_error(star) -> float:
        t = torch.as_tensor
        e = pose_errors(
            t(star.rotations[s]),
            t(truth.rotations[s]),
            t(star.shifts_angstrom[s]),
            t(truth.shifts_angstrom[s]),
            3.0,
        )
        return e["rot_median_deg"]

    assert searched_error(out[True]) <= searched_error(out[False]) + 0.05


def test_subset_without_an_encoder_is_refused_before_the_run(case, tmp_path):
    with pytest.raises((ConfigError, ValueError), match="amortize_steps"):
        run(
            _config(
                case / "particles.star",
                tmp_path / "r",
                **{"schedule.amortize_steps": 0, "schedule.search": {"subset": 500}},
            )
        )
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_global_check_replaces_poses_beyond_local_reach_and_keeps_good_ones(case):
    """The refine stage's global check: against the map of half the particles at their true poses
    (16 px, as the search scores), poses 90° off (random axes) return to within the rotation grid's
    spacing, and true poses are kept where they score better than every grid rotation (nearly all)."""
    from cryoforge.engine.semi_amortized import RefineStageOptions, globally_checked
    from cryoforge.ops.search import grid_spacing_deg

    ctx, R, origin = _truth(case)
    n = len(R)
    ref, bad, good = np.arange(0, n, 2), np.arange(1, n, 4), np.arange(3, n, 4)
    small = symmetric_reconstruction(full_size_sums(ctx, R[ref], 400, origin[ref], ref, box=16), "C1", 0.1)
    gen = torch.Generator().manual_seed(1)
    axis = torch.nn.functional.normalize(torch.randn(len(bad), 3, generator=gen, dtype=torch.float64), dim=1)
    rows = np.concatenate([bad, good])
    start = torch.cat([rotvec_to_matrix(axis * np.deg2rad(90.0)) @ R[bad], R[good]])
    opts = RefineStageOptions()
    rot, org, replaced = globally_checked(ctx, rows, start, origin[rows], small, opts, chunk=250)
    err = geodesic_distance_deg(rot, R[rows])
    spacing = grid_spacing_deg(opts.directions, opts.inplane)  # 15° (in-plane) × 11.7°
    assert float(err[: len(bad)].median()) < spacing / 2, float(err[: len(bad)].median())
    assert float((err[: len(bad)] < spacing).float().mean()) > 0.9
    kept = err[len(bad) :] < 1e-4
    assert float(kept.float().mean()) > 0.9  # true poses score better than the grid's nearest
    assert float(err[len(bad) :].max()) < spacing / 2  # and a grid pose replaces one only nearby
    assert len(bad) * 0.9 < replaced < len(bad) + 0.1 * len(good)
    assert float((org[: len(bad)] - origin[bad]).norm(dim=1).median()) < 1.0  # px of the data
    assert torch.equal(org[len(bad) :][kept], origin[good][kept])


def test_refine_poses_against_a_fixed_map_corrects_encoder_like_errors(case):
    """``infer --refine``'s step: poses 5° and ±0.5 px off (an encoder's typical error), refined
    against the simulation's own map (fixed, as the run's map.mrc is), return within 1° and 0.3 px."""
    from cryoforge.engine.semi_amortized import refine_poses
    from cryoforge.io.mrc import read_map
    from cryoforge.types import Pose

    _, _, source = prepare(_config(case / "particles.star", case / "unused"))
    truth = read_star(case / "particles.star")
    rows = np.arange(0, 1200, 3)
    R = torch.as_tensor(truth.rotations[rows], dtype=torch.float64)
    shift = torch.as_tensor(truth.shifts_angstrom[rows], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    axis = torch.randn(len(rows), 3, generator=gen, dtype=torch.float64)
    axis = axis / axis.norm(dim=1, keepdim=True)
    start = Pose(
        (rotvec_to_matrix(axis * np.deg2rad(5.0)) @ R).float(),
        (shift + 1.5 * torch.where(torch.rand(len(rows), 2, generator=gen) < 0.5, -1.0, 1.0)).float(),
    )
    volume = torch.from_numpy(read_map(case / "map.mrc")[0])
    out = refine_poses(source, rows, start, volume)
    err = geodesic_distance_deg(out.rotation.double(), R)
    assert float(err.median()) <= 1.0, float(err.median())
    assert float(((out.shift_angstrom.double() - shift).norm(dim=1) / 3.0).median()) <= 0.3


def test_infer_refine_needs_the_runs_map(case, tmp_path):
    """``cryoforge infer --refine`` on a finished run writes refined poses; without map.mrc it
    refuses in one line, before reading an image."""
    from cryoforge.engine.infer import infer_run
    from cryoforge.errors import InputFileError

    cfg = _config(case / "particles.star", tmp_path / "run", **{"schedule.subset": 600})
    run(cfg)
    plain = infer_run(tmp_path / "run", None, str(tmp_path / "plain.star"), first=200, average_views=False)
    exact = infer_run(
        tmp_path / "run",
        None,
        str(tmp_path / "exact.star"),
        first=200,
        average_views=False,
        exact_volume=True,
    )
    same = geodesic_distance_deg(
        torch.as_tensor(read_star(plain).rotations), torch.as_tensor(read_star(exact).rotations)
    )
    # the views read from the volume's samples choose as the network itself does, near ties aside
    assert float((same < 0.01).double().mean()) >= 0.9, float((same < 0.01).double().mean())
    refined = infer_run(
        tmp_path / "run", None, str(tmp_path / "refined.star"), first=200, average_views=False, refine=True
    )
    a, b = read_star(plain), read_star(refined)
    assert len(a.rotations) == len(b.rotations) == 200
    moved = geodesic_distance_deg(torch.as_tensor(a.rotations), torch.as_tensor(b.rotations))
    assert float(moved.max()) > 0.5  # the local search moved the encoder's poses
    (tmp_path / "run" / "map.mrc").unlink()
    with pytest.raises(InputFileError, match="--refine refines against the run's map"):
        infer_run(tmp_path / "run", None, str(tmp_path / "again.star"), first=10, refine=True)
    assert not (tmp_path / "again.star").exists()


def test_a_run_stopped_before_infer_exports_the_searched_subset_only(case, tmp_path):
    """Stopped after the search (train.max_steps): poses.star holds the 600 searched particles, not
    600 random poses beside them, and the pose errors are those of the searched particles."""
    cfg = _config(case / "particles.star", tmp_path / "run", **{"schedule.subset": 600, "train.max_steps": 5})
    res = run(cfg)
    poses = read_star(res.star_path)
    rows = search_rows(1200, 600, cfg.train.seed)
    assert rows is not None and len(poses.rotations) == 600
    truth = read_star(case / "particles.star")
    want = [n.split("@")[0] for n in truth.image_names[rows.numpy()]]
    assert [n.split("@")[0] for n in poses.image_names] == want  # the searched particles, in order
    from cryoforge.metrics.poses import pose_errors

    sub = rows.numpy()
    pe = pose_errors(
        torch.as_tensor(poses.rotations),
        torch.as_tensor(truth.rotations[sub]),
        torch.as_tensor(poses.shifts_angstrom),
        torch.as_tensor(truth.shifts_angstrom[sub]),
        3.0,
    )
    # the metrics are those of the searched particles against their own true poses
    assert res.metrics["rot_median_deg"] == pytest.approx(pe["rot_median_deg"], abs=0.05)
