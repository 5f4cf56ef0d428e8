"""Mid-run checkpoints (orbax): a killed or preempted run resumes from its newest checkpoint with the same numbers.

    save(run_dir, state)              # <run dir>/checkpoints/<step>/; the newest KEEP are kept
    restore(run_dir, like)            # the newest checkpoint's state, shaped like `like` (None if there is none)

The loop's whole state is one pytree (`loop.LoopState`): parameters, optimiser state, the PRNG key that draws every
batch and augmentation, the step, the divergence flags and the curvature tracker's warm-start vectors. Restored, the
same compiled chunks continue the run bit for bit; the metrics so far are metrics.csv up to the checkpoint's step
(`run.Record`). orbax writes each checkpoint into a temporary folder and renames it when complete, so a kill
during a save leaves the previous checkpoint as the newest.

Checkpoints are taken at chunk boundaries: after the chunk that crosses a multiple of `train.checkpoint_every`, and
after the current chunk once SIGTERM (SLURM's preemption) or SIGUSR2 (its time-limit warning under submitit) has
arrived — then the run stops with `Preempted` (exit status 143, the record still `running`), after handing the
signal on to submitit where it runs under it (submitit requeues the job), and a relaunch resumes it. A finished run's
checkpoints are removed: its record is the result.
"""
import contextlib
import logging
import pathlib
import shutil
import signal
import threading

import jax
import orbax.checkpoint as ocp

KEEP = 2
log = logging.getLogger(__name__)
FOLDER = "checkpoints"
_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
_arrived: dict = {}  # signal number -> the handler it displaced, for the signals that arrived


class Preempted(SystemExit):
    """SIGTERM or SIGUSR2 arrived; the run's checkpoint is written and it stops (exit status 143, as a process killed
    by SIGTERM). Not an `Exception`, so no runner records it as an error: the record stays `running`."""

    def __init__(self, where, step: int, signal_name: str = "SIGTERM"):
        super().__init__(143)
        self.where, self.step, self.signal_name = where, step, signal_name

    def __str__(self) -> str:
        return f"{self.where}: {self.signal_name}, checkpoint at step {self.step} written; relaunch to resume"


def _manager(run_dir) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(pathlib.Path(run_dir).resolve() / FOLDER, options=ocp.CheckpointManagerOptions(
        max_to_keep=KEEP, enable_async_checkpointing=False, create=True))


def save(run_dir, state) -> None:
    with _manager(run_dir) as manager:
        manager.save(int(state.step), args=ocp.args.StandardSave(state))


def steps(run_dir) -> list[int]:
    """The steps of the run's complete checkpoints, oldest first."""
    if not (pathlib.Path(run_dir) / FOLDER).is_dir():
        return []
    with _manager(run_dir) as manager:
        return sorted(manager.all_steps())


def restore(run_dir, like, step: int | None = None):
    """The state saved at `step` (default: the newest), with `like`'s structure, shapes and dtypes; None if none."""
    if step is None:
        saved = steps(run_dir)
        if not saved:
            return None
        step = saved[-1]
    with _manager(run_dir) as manager:
        return manager.restore(step, args=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, like)))


def remove(run_dir) -> None:
    shutil.rmtree(pathlib.Path(run_dir) / FOLDER, ignore_errors=True)


def due(before: int, after: int, every: int) -> bool:
    """Whether a chunk that took the run from step `before` to `after` crossed a multiple of `every` (0 = never)."""
    return every > 0 and after // every > before // every


@contextlib.contextmanager
def stop_on_preemption():
    """While inside, SIGTERM (SLURM's preemption) and SIGUSR2 (what SLURM sends `signal_delay_s` before a job's time
    limit under submitit) only mark the run to checkpoint and stop at the end of its chunk (`stop_if_preempted`);
    the previous handlers are put back afterwards. Outside the main thread: nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _arrived.clear()
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, lambda signum, frame: _arrived.setdefault(signum, previous[signum]))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def preempted() -> bool:
    return bool(_arrived)


def stop_if_preempted(where, step: int) -> None:
    """Once the chunk's checkpoints are written: if a signal arrived, hand it to the handler it displaced (submitit's
    requeues the job) and stop with `Preempted` (logged)."""
    if not _arrived:
        return
    signum, displaced = next(iter(_arrived.items()))
    stop = Preempted(where, step, signal.Signals(signum).name)
    log.warning(str(stop))
    if callable(displaced):
        displaced(signum, None)
    raise stop
