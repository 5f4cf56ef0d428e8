"""A test hook, not part of the package: a Python process whose PYTHONPATH starts with this folder imports it at
start-up (`site`). With WARMUP_TEST_PAUSE=<file> set, the first time a run record appends a chunk that is not its
last while another cell of the same sweep directory has already finished, the process writes <file> (the paused
cell's directory) and then waits to be killed — so tests/test_launch.py can SIGKILL a sweep at a known point,
mid-way through a later cell, without racing the clock. Without the variable it does nothing. It wraps
`warmup.run.Record.append`, through which both the sequential and the batched runners write each chunk."""
import os

_pause_file = os.environ.get("WARMUP_TEST_PAUSE")

if _pause_file:
    import time

    from warmup import records, run
    from warmup.files import write_atomic

    _append = run.Record.append

    def _append_then_pause(self, rows, steps_completed):
        _append(self, rows, steps_completed)
        if steps_completed >= self.spec.steps:  # this cell's last chunk: not mid-way
            return
        others = [d for d in self.run_dir.parent.iterdir() if d.is_dir() and d != self.run_dir]
        if any(records.finished_summary(d) is not None for d in others):
            write_atomic(_pause_file, str(self.run_dir))  # whole or absent: the test reads it once it appears
            while True:
                time.sleep(3600)

    run.Record.append = _append_then_pause
