"""Sweep progress for every launcher: cells done of the total, how many diverged or failed so far, and an ETA.

A Hydra callback (`hydra.callbacks.progress` in train.yaml) watches the sweep directory from the launching process
— the cells' `summary.json` records are the truth, whichever launcher (sequential, parallel, batched, SLURM) runs
them — and reports a line: a bar on a terminal, and every `every_s` seconds (30 by default) a line in
`<sweep dir>/progress.log` and the log. The total is the product of the sweep's value counts (the command line's
and the experiment grid's); a sweep Hydra alone expands (`interval`, `glob`) shows counts without a total.
"""
import logging
import math
import pathlib
import sys
import threading
import time

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def cell_count(overrides: list[str], grid: dict | None) -> int | None:
    """Cells of a sweep: the product of each swept key's value count (command line first, then the grid's keys the
    command line does not set); None where Hydra alone can enumerate a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    parser = OverridesParser.create()
    parsed = parser.parse_overrides([o for o in overrides if not o.startswith("hydra.")])
    given = {o.get_key_element().lstrip("+~") for o in parsed}
    parsed += parser.parse_overrides([f"{k}={v}" for k, v in (grid or {}).items() if k not in given])
    total = 1
    for override in parsed:
        if override.is_sweep_override():
            if not override.is_discrete_sweep() or isinstance(override.value(), Glob):
                return None
            total *= len(list(override.sweep_string_iterator()))
    return total


def tally(sweep_dir: pathlib.Path, steps: int | None = None) -> dict:
    """Statuses of the records below `sweep_dir`, and the work done in cells: 1 per finished cell, the fraction of
    its `steps` for a running one (a batched group's cells all finish at its end, so counting finished cells alone
    would give no estimate until then)."""
    import json

    counts = {"converged": 0, "diverged": 0, "failed": 0, "skipped": 0, "error": 0, "running": 0, "work": 0.0}
    for path in sweep_dir.rglob("summary.json"):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):  # replaced while read: counted on the next look
            continue
        status = summary.get("status")
        counts[status] = counts.get(status, 0) + 1
        if status != "running":
            counts["work"] += 1.0
        elif steps:
            counts["work"] += min(summary.get("steps_completed", 0) / steps, 1.0)
    return counts


def line(counts: dict, total: int | None, elapsed: float, work_at_start: float = 0.0) -> str:
    """The report; the ETA extrapolates the work done since launch (`counts["work"]` less `work_at_start`)."""
    done = sum(counts[s] for s in ("converged", "diverged", "failed", "skipped", "error"))
    eta = ""
    if total is not None and counts["work"] > work_at_start:
        eta = f", ETA {_clock(elapsed / (counts['work'] - work_at_start) * max(total - counts['work'], 0))}"
    of = f"/{total}" if total is not None else ""
    return (f"sweep: {done}{of} cells done ({counts['converged']} converged, {counts['diverged']} diverged, "
            f"{counts['failed']} failed, {counts['error']} errors), {counts['running']} running, "
            f"{_clock(elapsed)} elapsed{eta}")


def _clock(seconds: float) -> str:
    seconds = int(seconds) if math.isfinite(seconds) else 0
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class SweepProgress(Callback):
    def __init__(self, every_s: float = 30.0):
        self.every_s = every_s
        self.stop: threading.Event | None = None
        self.thread: threading.Thread | None = None

    def __getstate__(self) -> dict:
        """Launchers that pickle the callbacks (submitit) get the settings, not the watcher thread."""
        return {"every_s": self.every_s, "stop": None, "thread": None}

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.stop = threading.Event()
        self.sweep_dir = pathlib.Path(config.hydra.sweep.dir)
        self.total = cell_count(list(config.hydra.overrides.task), config.hydra.sweeper.get("params"))
        self.steps = OmegaConf.select(config, "train.steps")
        self.work_at_start = tally(self.sweep_dir, self.steps)["work"]  # a relaunch's finished cells are not its rate
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _line(self) -> str:
        return line(tally(self.sweep_dir, self.steps), self.total, time.perf_counter() - self.started,
                    self.work_at_start)

    def _report(self, text: str) -> None:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        with open(self.sweep_dir / "progress.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def _watch(self) -> None:
        tty = sys.stderr.isatty()
        last = time.perf_counter()
        while not self.stop.wait(1.0 if tty else self.every_s):
            text = self._line()
            if tty:
                print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
            if not tty or time.perf_counter() - last >= self.every_s:
                self._report(text)
                if not tty:
                    log.info(text)
                last = time.perf_counter()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.thread is None:
            return
        self.stop.set()
        self.thread.join()
        text = self._line()
        self._report(text)
        if sys.stderr.isatty():
            print("\r\033[K", end="", file=sys.stderr)
        log.info(text)
