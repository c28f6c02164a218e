"""What the terminal says: plain progress lines when stdout is a pipe, and the end-of-run summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from cryoforge.engine.context import RunResult

SMALL = {
    "schedule.name": "cryoai",
    "encoder.channels": [8, 16],
    "encoder.head_hidden": [32],
    "volume.hidden_dim": 32,
    "train.batch_size": 8,
    "train.tensorboard": False,
    "train.pictures": False,
}


def test_piped_stdout_gets_plain_progress_lines_while_training(tiny, tmp_path):
    out = tmp_path / ("a-run-folder-with-a-long-name-as-on-a-cluster-scratch-disk-" + "x" * 40) / "job1"
    assert len(str(out / "map.mrc")) > 100
    args = [sys.executable, "-m", "cryoforge.cli", "run", "--particles", str(tiny["star"]), "-d", str(out)]
    for k, v in {
        **SMALL,
        "train.epochs": 100,
        "train.max_steps": 150,
        "train.progress": True,
        "train.log_every_s": 0.2,
    }.items():
        args += ["-o", k, json.dumps(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    lines, running = [], []
    t0 = time.monotonic()
    with (
        open(tmp_path / "stderr.txt", "w") as err,
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env=env) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:  # arrives line by line: the child flushes each one
            lines.append(line.rstrip("\n"))
            running.append(proc.poll() is None)
        proc.wait(timeout=300)
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert time.monotonic() - t0 < 300
    steps = [i for i, ln in enumerate(lines) if " stage train: step " in ln]
    assert len(steps) >= 3, lines  # a steady stream, not one line at the end
    assert running[steps[0]], "the first progress line came only after the run had ended"
    assert all("training time" in lines[i] for i in steps)  # whole lines, never wrapped
    assert all("stage left ~" in lines[i] for i in steps[1:-1])  # the time left, once a pace is known
    assert any(ln.startswith("  map ") and ln.endswith(str(out / "map.mrc")) for ln in lines)
    assert lines[-1] == f"open the map: chimerax {out / 'map.mrc'}"  # last, and not cut at 80 columns
    assert "━" not in "\n".join(lines)  # no rich bar or table in a log
    assert (out / "run.log").read_text().count(" step ") >= 15  # every train.log_every steps


def _summary(capsys, result: RunResult) -> list[str]:
    from cryoforge.commands.run import _print_result

    _print_result(result)
    return capsys.readouterr().out.splitlines()


def test_summary_lists_only_what_exists_and_labels_ground_truth_metrics(tmp_path, capsys):
    (tmp_path / "map.mrc").write_bytes(b"x")
    (tmp_path / "report.html").write_text("<html></html>")
    res = RunResult(tmp_path, map_path=tmp_path / "map.mrc", star_path=tmp_path / "poses.star")
    res.metrics = {
        "steps": 6,
        "final_loss": 0.5,
        "halfmap_resolution_0.143_angstrom": 7.0,
        "halfmap_resolution_0.143_px": 2.33,
        "halfmap_resolution_0.143_bound": None,
        "halfmap_resolution_0.143_text": "7.0 Å",
    }
    lines = _summary(capsys, res)
    text = "\n".join(lines)
    assert "poses" not in text and "FSC plot" not in text  # poses.star was not written
    assert "report" in text and "halfmap_resolution_0.143" in text and "7.0 Å, 2.33 px" in text
    assert "ground truth" not in text  # no truth given, nothing labelled as one
    assert lines[-1] == f"open the map: chimerax {tmp_path / 'map.mrc'}"

    res.metrics.update(
        {
            "rot_median_deg": 3.0,
            "resolution_0.5_angstrom": 8.0,
            "resolution_0.5_px": 2.67,
            "resolution_0.5_bound": None,
            "resolution_0.5_text": "8.0 Å",
        }
    )
    lines = _summary(capsys, res)
    assert any("rot_median_deg (vs ground truth)" in ln for ln in lines)
    assert any("resolution_0.5 (vs ground truth)" in ln and "8.0 Å" in ln for ln in lines)
    assert not any("halfmap_resolution_0.143 (vs ground truth)" in ln for ln in lines)


def test_summary_without_a_map_does_not_offer_to_open_one(tmp_path, capsys):
    lines = _summary(capsys, RunResult(tmp_path, map_path=tmp_path / "map.mrc"))
    assert not any("chimerax" in ln or ln.strip().startswith("map") for ln in lines)


def test_progress_line_gives_particles_done_and_the_stage_time_left():
    from cryoforge.engine.callbacks import StepInfo
    from cryoforge.engine.progress import StageClock, progress_line
    from cryoforge.schedules.base import Stage

    stage = Stage(name="infer", kind="infer")
    clock = StageClock()
    first = StepInfo(stage, 10, 1, 5, 0, 0.0, 100.0, 1.0, True, 20_000, 100_000)
    assert clock.left_s(first) is None  # no pace yet
    time.sleep(0.2)
    second = StepInfo(stage, 11, 2, 5, 0, 0.0, 100.0, 1.0, True, 40_000, 100_000)
    left = clock.left_s(second)
    assert left is not None and 0.5 <= left <= 1.5  # 3 steps left at ~0.2 s each
    line = progress_line(second, 65.0, left)
    assert "stage infer: step 2/5" in line and "particles 40,000/100,000" in line
    assert "stage left ~0:00:01" in line or "stage left ~0:00:00" in line
    assert line.endswith("training time 0:01:05")


def test_long_search_steps_show_particles_done_inside_them(tiny, tmp_path):
    """A global search iteration over many particles takes minutes: plain lines say how many
    particles of it are done (and the time left in it) before the step ends, for the global
    iterations, the full-size reconstruction and each local refinement."""
    out = tmp_path / "job"
    args = [sys.executable, "-m", "cryoforge.cli", "run", "--particles", str(tiny["star"]), "-d", str(out)]
    over = {
        "schedule.fit_steps": 1,
        "schedule.amortize_steps": 0,
        "schedule.search": {"iterations": 2, "batch": 8, "refine_steps_deg": [2.0]},
        "volume.hidden_dim": 32,
        "encoder.channels": [8, 16],
        "encoder.head_hidden": [32],
        "train.tensorboard": False,
        "train.pictures": False,
        "train.progress": True,
        "train.log_every_s": 1e-6,
    }
    for k, v in over.items():
        args += ["-o", k, json.dumps(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    inside = [ln for ln in lines if " stage search: " in ln and ", particles " in ln and "step " not in ln]
    passes = ("global iteration 1/2", "global iteration 2/2", "full-size reconstruction")
    passes += ("local refinement (2°)",)
    for what in passes:
        assert any(f"stage search: {what}, particles " in ln for ln in inside), (what, lines)
    assert any("left in it" in ln for ln in inside)  # a pace once a few batches are through
    assert (out / "map.mrc").is_file()
