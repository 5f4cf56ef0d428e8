"""Multirun launchers through the real CLI (configs/launcher/, hydra_plugins/warmup_batched_launcher): resume after
SIGKILL, errors recorded per cell, batched = sequential, and the submitit (SLURM) path on its local executor."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from warmup import collect, records
from conftest import CLI_ENV, TINY

GRID = ["schedule.lr_trgt_scale=1,64", "schedule.warmup_steps=1,8"]  # c = 64 without warmup diverges
ENV = CLI_ENV


def sweep_cmd(sweep_dir, data_root, *args):
    return [sys.executable, "-m", "warmup.train", "-m", *TINY, f"data.root={data_root}", "sharpness.every=5",
            f"hydra.sweep.dir={sweep_dir}", *args]


def launch(sweep_dir, data_root, *args, timeout=300):
    return subprocess.run(sweep_cmd(sweep_dir, data_root, *args), capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def summaries(sweep_dir) -> dict[str, dict]:
    """{cell directory: summary} for every record below `sweep_dir`; fails on any unreadable file."""
    out = {}
    for path in sorted(pathlib.Path(sweep_dir).glob("*/summary.json")):
        out[path.parent.name] = json.loads(path.read_text())
        if (path.parent / "metrics.csv").exists():
            records.read_metrics(path.parent)
    return out


def finished(sweep_dir) -> set[str]:
    return {name for name in summaries(sweep_dir)
            if records.finished_summary(pathlib.Path(sweep_dir) / name) is not None}


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """The grid run once, uninterrupted, by the default (sequential) launcher."""
    sweep_dir = tmp_path_factory.mktemp("reference")
    result = launch(sweep_dir, data_root, *GRID)
    assert result.returncode == 0, result.stderr[-2000:]
    return sweep_dir


def test_reference_grid_has_one_record_per_cell_named_by_its_overrides(reference):
    table = collect.collect(reference).set_index(["lr_trgt_scale", "warmup_steps"])
    assert len(table) == 4 and not any("launcher" in run or "data.root" in run for run in table.run)
    assert table.loc[(64, 1), "status"] == "diverged" and table.loc[(1, 8), "status"] == "converged"
    assert "schedule.lr_trgt_scale=64,schedule.warmup_steps=1" in table.loc[(64, 1), "run"]
    # the sweep's progress (warmup.progress): off a terminal, lines in progress.log, the last one at the end
    last = (reference / "progress.log").read_text().splitlines()[-1]
    assert "sweep: 4/4 cells done (3 converged, 1 diverged, 0 failed, 0 errors), 0 running" in last


def test_batched_launcher_reproduces_the_sequential_records(reference, data_root, tmp_path):
    result = launch(tmp_path, data_root, *GRID, "launcher=batched")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Launching 4 jobs batched" in result.stderr + result.stdout
    ours, theirs = summaries(tmp_path), summaries(reference)
    assert ours.keys() == theirs.keys()  # the same cell directories: a sweep can be resumed by either launcher
    for name in ours:
        assert ours[name]["status"] == theirs[name]["status"] and ours[name]["batched_cells"] == 4
        a, b = records.read_metrics(tmp_path / name), records.read_metrics(reference / name)
        assert list(a.step) == list(b.step)
        np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=1e-4)
        np.testing.assert_allclose(a.sharpness, b.sharpness, rtol=1e-3)


def test_a_second_launch_into_the_sweep_directory_counts_only_its_own_cells(reference, data_root, tmp_path):
    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)  # four finished cells of another launch
    (tmp_path / "progress.log").unlink()
    result = launch(tmp_path, data_root, "schedule.lr_trgt_scale=1,2", "schedule.warmup_steps=8")  # one resumed, one new
    assert result.returncode == 0, result.stderr[-2000:]
    last = (tmp_path / "progress.log").read_text().splitlines()[-1]
    assert "sweep: 2/2 cells done (2 converged, 0 diverged, 0 failed, 0 errors), 0 running" in last
    assert len(summaries(tmp_path)) == 5


PAUSE_HOOK = pathlib.Path(__file__).parent / "launch_pause"  # its sitecustomize.py pauses a sweep at a known point


@pytest.mark.parametrize("launcher", ["sequential", pytest.param("batched", marks=pytest.mark.slow)])
def test_sweep_killed_mid_way_resumes_without_redoing_finished_cells(data_root, tmp_path, launcher):
    # Batched: two cell groups (the loss differs, so the launcher compiles two programs, one after the other);
    # sequential: two cells. The sweep runs with the pause hook: once a cell has finished, the next cell to write a
    # chunk (10 of its 40 steps) signals and waits, and is killed there — no polling against the clock.
    losses = "loss=mse,xent" if launcher == "batched" else "loss=mse"
    grid = [losses, "schedule.lr_trgt_scale=1,2", "train.steps=40", "train.chunk_steps=10"]
    cells = 4 if launcher == "batched" else 2
    sweep_dir, signal_file = tmp_path / "sweep", tmp_path / "paused"
    env = {**ENV, "WARMUP_TEST_PAUSE": str(signal_file),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PAUSE_HOOK), ENV.get("PYTHONPATH")]))}
    log = (tmp_path / "killed_sweep.log").open("w")  # a file, not a pipe: a full pipe would block the sweep
    proc = subprocess.Popen(sweep_cmd(sweep_dir, data_root, *grid, f"launcher={launcher}"),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.time() + 300  # a safety net for a hung sweep only: the kill point does not depend on it
        while not signal_file.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the sweep ended before it paused: {log.name}"
        assert signal_file.exists(), "the sweep did not pause within 300 s"
        paused = pathlib.Path(signal_file.read_text())
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()

    paused_summary = records.read_summary(paused)
    assert paused_summary["status"] == "running" and paused_summary["steps_completed"] == 10  # killed mid-way
    killed, done = summaries(sweep_dir), finished(sweep_dir)  # every file left behind parses
    assert done and len(done) < cells
    assert all(killed[name]["status"] == "running" for name in killed.keys() - done)
    before = {name: [(sweep_dir / name / f).stat().st_mtime_ns for f in ("metrics.csv", "summary.json")]
              for name in done}
    metrics_before = {name: (sweep_dir / name / "metrics.csv").read_text() for name in done}

    result = launch(sweep_dir, data_root, *grid, f"launcher={launcher}")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in done:  # skipped, untouched
        assert f"{name}: already finished" in result.stdout
        assert [(sweep_dir / name / f).stat().st_mtime_ns for f in ("metrics.csv", "summary.json")] == before[name]
        assert (sweep_dir / name / "metrics.csv").read_text() == metrics_before[name]
    assert finished(sweep_dir) == set(summaries(sweep_dir)) and len(summaries(sweep_dir)) == cells

    # a redone cell equals an uninterrupted run of it
    redone = sorted(set(summaries(sweep_dir)) - done)[0]
    fresh_dir = tmp_path / "fresh"
    fresh = subprocess.run([sys.executable, "-m", "warmup.train", "-m", *redone.split(","), f"data.root={data_root}",
                            "train.progress=false", f"launcher={launcher}", f"hydra.sweep.dir={fresh_dir}"],
                           capture_output=True, text=True, timeout=300, env=ENV)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    a, b = records.read_metrics(sweep_dir / redone), records.read_metrics(fresh_dir / redone)
    assert list(a.step) == list(b.step)
    np.testing.assert_allclose(a.train_loss, b.train_loss, rtol=1e-4)


@pytest.mark.parametrize("launcher", ["sequential", pytest.param("batched", marks=pytest.mark.slow)])
def test_cell_that_raises_is_recorded_as_error_and_the_sweep_goes_on(data_root, tmp_path, launcher):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in data_root.iterdir():  # a truncated download: each gzip stream ends early
        (corrupt / f.name).write_bytes(f.read_bytes()[:100])
    sweep_dir = tmp_path / "sweep"
    result = launch(sweep_dir, f"{corrupt},{data_root}", "schedule.lr_trgt_scale=1", f"launcher={launcher}",
                    "hydra.sweep.subdir=cell${hydra.job.num}")
    assert result.returncode != 0  # the failed cell is reported at the end of the sweep ...
    found = summaries(sweep_dir)
    assert found["cell0"]["status"] == "error" and "DataFileError" in found["cell0"]["error"]
    assert str(corrupt) in found["cell0"]["error"]  # one line naming the file, and the cell is still in the table
    assert set(collect.collect(sweep_dir).run) == {"cell0", "cell1"}
    assert found["cell1"]["status"] == "converged"  # ... after the other cell ran
    assert finished(sweep_dir) == {"cell1"}  # a relaunch retries the error


def test_submitit_launcher_runs_cells_as_local_jobs(data_root, tmp_path):
    result = launch(tmp_path, data_root, "schedule.lr_trgt_scale=1,2", "launcher=slurm_local")
    assert result.returncode == 0, result.stderr[-2000:]
    assert finished(tmp_path) == set(summaries(tmp_path)) and len(summaries(tmp_path)) == 2
    assert any((tmp_path / ".submitit").iterdir())  # submitit's job folders: the cells ran as its jobs
    assert sorted(collect.collect(tmp_path).lr_trgt_scale) == [1, 2]


def test_parallel_launcher_caps_each_processes_share_of_the_gpu():
    from conftest import compose_config
    cfg = compose_config(["launcher=parallel", "hydra.launcher.n_jobs=4"], with_hydra=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    env = cfg.hydra.job.env_set
    assert env.XLA_PYTHON_CLIENT_MEM_FRACTION == "0.225" and env.XLA_PYTHON_CLIENT_PREALLOCATE == "false"


@pytest.mark.slow
def test_parallel_launcher_runs_cells_in_worker_processes(data_root, tmp_path):
    result = launch(tmp_path, data_root, "schedule.lr_trgt_scale=1,2", "launcher=parallel")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Joblib" in result.stderr + result.stdout
    assert finished(tmp_path) == set(summaries(tmp_path)) and len(summaries(tmp_path)) == 2


def test_skip_above_stops_each_lr_axis_at_its_first_divergence(data_root, tmp_path):
    result = launch(tmp_path, data_root, "schedule.lr_trgt_scale=64,128", "schedule.warmup_steps=1,8",
                    "train.skip_above=diverged")
    assert result.returncode == 0, result.stderr[-2000:]
    table = collect.collect(tmp_path).set_index(["lr_trgt_scale", "warmup_steps"])
    assert table.loc[(64, 1), "status"] == "diverged"
    assert table.loc[(128, 1), "status"] == "skipped" and "lr_trgt_scale=64" in table.loc[(128, 1), "skipped_because"]
    assert table.loc[(128, 8), "status"] != "skipped"  # another T_wrm: its own axis
    assert not (tmp_path / table.loc[(128, 1), "run"] / "metrics.csv").exists()  # nothing was trained
