"""A test hook, not part of the package: a Python process whose PYTHONPATH starts with this folder imports it at
start-up (`site`). With WARMUP_TEST_KILL_AT=<step>, the first run record to append a chunk reaching that step sends
its own process SIGKILL right after the chunk's rows are written (before any checkpoint of that chunk), as a
machine failure would; with WARMUP_TEST_SIGTERM_AT=<step> it sends SIGTERM instead (SLURM's preemption) and goes on.
Without the variables it does nothing. It wraps `warmup.run.Record.append`, through which both the sequential and
the batched runners write each chunk."""
import os
import signal

_at = {name: int(os.environ[f"WARMUP_TEST_{name}_AT"]) for name in ("KILL", "SIGTERM")
       if f"WARMUP_TEST_{name}_AT" in os.environ}

if _at:
    from warmup import run

    _append = run.Record.append
    _sent = set()

    def _append_then_signal(self, rows, steps_completed):
        _append(self, rows, steps_completed)
        for name, step in _at.items():
            if steps_completed >= step and name not in _sent:
                _sent.add(name)
                os.kill(os.getpid(), signal.SIGKILL if name == "KILL" else signal.SIGTERM)

    run.Record.append = _append_then_signal
