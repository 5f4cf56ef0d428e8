"""Mid-run checkpoints: a run killed (SIGKILL) or preempted (SIGTERM) at a random chunk and relaunched finishes with
a metrics.csv byte-identical to an uninterrupted run's."""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warmup import checkpoints, loop, records, sweep
from warmup.run import execute
from conftest import CLI_ENV, TINY, compose_config

HOOK = pathlib.Path(__file__).parent / "kill_at"  # its sitecustomize.py signals the run after a chunk's rows
# 20 steps in chunks of 4, a checkpoint after steps 8 and 16: a kill after the chunk ending at 4 restarts from
# scratch, one at 8 or 16 after its rows but before that chunk's checkpoint, so the run resumes from the one before
RESUMABLE = ("train.chunk_steps=4", "train.checkpoint_every=8")
CASES = {
    "gd_tracking": ("schedule.lr_trgt_scale=1", "schedule.warmup_steps=5", "sharpness.every=2"),
    "adam_minibatch_augmented": ("optimizer=adam", "schedule.lr_trgt=1e-3", "data.batch_size=32",
                                 "data.augment.flip=true", "data.augment.crop=2", "data.augment.mixup_alpha=1.0",
                                 "sharpness.every=4"),
}
SLOW = pytest.mark.slow  # each such case takes 25-35 s on 2 cores: the fast suite keeps the single-run kill and signals
# a batched group: three η_trgt, the largest diverging within the first chunks, the others resumed together
GROUP = [("schedule.lr_trgt=0.3",), ("schedule.lr_trgt=0.6", "schedule.warmup_steps=8"), ("schedule.lr_trgt=3.0",)]
CHILD = """
import json, pathlib, sys
import jax
jax.config.update("jax_threefry_partitionable", False)  # as conftest.py: the records must match this process's
sys.path.insert(0, sys.argv[1])
import conftest
from warmup import sweep
from warmup.run import execute
cells = json.loads(sys.argv[3])
if len(cells) == 1:
    execute(conftest.compose_config(cells[0]), pathlib.Path(sys.argv[2]))
else:
    sweep.run_batched([conftest.compose_config(c) for c in cells],
                      [pathlib.Path(sys.argv[2]) / f"cell{i}" for i in range(len(cells))], cell_axis=sys.argv[4])
"""


def interrupted(overrides, run_dir, signal_name: str, step: int, cells=None, cell_axis="vmap"
                ) -> subprocess.CompletedProcess:
    """Run the config (or the batched group of `cells`, overrides each) in a child process that signals itself
    after the chunk reaching `step`."""
    env = {**CLI_ENV, f"WARMUP_TEST_{signal_name}_AT": str(step),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK), CLI_ENV.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", CHILD, str(pathlib.Path(__file__).parent), str(run_dir),
                           json.dumps(cells or [overrides]), cell_axis],
                          capture_output=True, text=True, env=env, timeout=300)


def assert_same_record(resumed_dir, reference_dir, not_compared=("wall_time_s",)):
    assert (resumed_dir / "metrics.csv").read_bytes() == (reference_dir / "metrics.csv").read_bytes()
    ours, theirs = records.read_summary(resumed_dir), records.read_summary(reference_dir)
    for key in not_compared:
        ours.pop(key), theirs.pop(key)
    assert ours == theirs
    assert not (resumed_dir / checkpoints.FOLDER).exists()  # a finished run keeps its record, not its checkpoints


@pytest.mark.parametrize("case", [pytest.param(c, marks=SLOW if c != "gd_tracking" else ()) for c in CASES])
def test_a_run_killed_at_a_random_chunk_resumes_to_identical_records(data_root, tmp_path, case):
    overrides = [*TINY, f"data.root={data_root}", *RESUMABLE, *CASES[case]]
    cfg = compose_config(overrides)
    reference = execute(cfg, tmp_path / "uninterrupted")
    kill_at = random.Random(case).choice([4, 8, 12, 16])
    child = interrupted(overrides, tmp_path / "run", "KILL", kill_at)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert records.read_summary(tmp_path / "run")["status"] == "running"
    assert checkpoints.steps(tmp_path / "run") == [s for s in (8, 16) if s < kill_at]
    assert records.read_metrics(tmp_path / "run").step.max() == kill_at - 1  # rows past the newest checkpoint
    resumed = execute(cfg, tmp_path / "run")
    assert resumed["status"] == reference["status"]
    assert_same_record(tmp_path / "run", tmp_path / "uninterrupted")


def test_sigterm_checkpoints_at_the_chunk_end_and_stops_then_resumes(data_root, tmp_path):
    overrides = [*TINY, f"data.root={data_root}", *RESUMABLE, "train.checkpoint_every=0", *CASES["gd_tracking"]]
    execute(compose_config(overrides), tmp_path / "uninterrupted")
    child = interrupted(overrides, tmp_path / "run", "SIGTERM", 12)
    assert child.returncode == 143, child.stderr[-3000:]
    assert "SIGTERM, checkpoint at step 12 written; relaunch to resume" in child.stderr
    assert records.read_summary(tmp_path / "run")["status"] == "running"
    assert checkpoints.steps(tmp_path / "run") == [12]  # checkpoint_every=0: only the SIGTERM one
    execute(compose_config(overrides), tmp_path / "run")
    assert_same_record(tmp_path / "run", tmp_path / "uninterrupted")


def test_save_restore_keeps_the_newest_two_and_the_state_exactly(tmp_path):
    state = loop.LoopState(
        params={"w": jnp.arange(6.0).reshape(2, 3)}, opt_state=(jnp.ones(3), jnp.array(2, jnp.int32)),
        key=jax.random.PRNGKey(7), step=jnp.array(0, jnp.int32), frozen=jnp.array(False),
        diverged_step=jnp.array(-1, jnp.int32), eigvec=jnp.zeros((2, 6)), pre_eigvec=jnp.ones((2, 6)))
    for step in (8, 16, 24):
        checkpoints.save(tmp_path, state._replace(step=jnp.array(step, jnp.int32), frozen=jnp.array(step > 16)))
    assert checkpoints.steps(tmp_path) == [16, 24]
    restored = checkpoints.restore(tmp_path, state)
    assert int(restored.step) == 24 and bool(restored.frozen) and restored.frozen.dtype == jnp.bool_
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state._replace(step=24, frozen=True))):
        np.testing.assert_array_equal(a, b)
    assert checkpoints.restore(tmp_path / "none", state) is None
    assert [checkpoints.due(b, a, 8) for b, a in ((0, 4), (4, 8), (8, 12), (12, 20), (0, 100))] == \
        [False, True, False, True, True]
    assert not checkpoints.due(0, 100, 0)


@SLOW
def test_a_checkpoint_of_another_config_is_not_resumed(data_root, tmp_path):
    overrides = [*TINY, f"data.root={data_root}", *RESUMABLE, *CASES["gd_tracking"]]
    child = interrupted(overrides, tmp_path / "run", "KILL", 12)
    assert child.returncode == -signal.SIGKILL and checkpoints.steps(tmp_path / "run") == [8]
    other = [o for o in overrides if not o.startswith("schedule.lr_trgt_scale")] + ["schedule.lr_trgt_scale=0.5"]
    execute(compose_config(other), tmp_path / "run")  # trained from step 0 under the new config
    execute(compose_config(other), tmp_path / "fresh")
    assert_same_record(tmp_path / "run", tmp_path / "fresh")


@SLOW
@pytest.mark.parametrize("cell_axis", ["vmap", "map"])
def test_a_batched_group_killed_mid_way_resumes_to_identical_records(data_root, tmp_path, cell_axis):
    base = [*TINY, f"data.root={data_root}", *RESUMABLE, "sharpness.every=4"]
    cells = [[*base, *cell] for cell in GROUP]
    cfgs = [compose_config(c) for c in cells]
    reference = sweep.run_batched(cfgs, [tmp_path / "uninterrupted" / f"cell{i}" for i in range(3)], cell_axis)
    assert [r["status"] for r in reference] == ["converged", "converged", "diverged"]
    child = interrupted(None, tmp_path / "run", "KILL", 12, cells=cells, cell_axis=cell_axis)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert [checkpoints.steps(tmp_path / "run" / f"cell{i}") for i in range(2)] == [[8], [8]]
    sweep.run_batched(cfgs, [tmp_path / "run" / f"cell{i}" for i in range(3)], cell_axis)
    for i in range(3):  # the diverged cell finished before the kill; the other two resumed as a group of 2
        assert_same_record(tmp_path / "run" / f"cell{i}", tmp_path / "uninterrupted" / f"cell{i}",
                           not_compared=("wall_time_s", "batched_cells"))


def test_a_time_limit_signal_is_handed_on_to_the_handler_it_displaced_after_the_checkpoint():
    """Under submitit, SIGUSR2 (SLURM's time-limit warning) is submitit's cue to requeue the job: the run marks it,
    and once its checkpoint is written calls submitit's handler, then stops; the handler is back afterwards."""
    calls = []
    requeue = lambda signum, frame: calls.append(signum)
    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        with checkpoints.stop_on_preemption():
            os.kill(os.getpid(), signal.SIGUSR2)
            assert checkpoints.preempted() and calls == []  # marked only: the chunk goes on to its end
            with pytest.raises(checkpoints.Preempted, match="run0: SIGUSR2, checkpoint at step 12 written") as stop:
                checkpoints.stop_if_preempted("run0", 12)
        assert calls == [signal.SIGUSR2] and stop.value.code == 143
        assert signal.getsignal(signal.SIGUSR2) is requeue
    finally:
        signal.signal(signal.SIGUSR2, previous)
