"""Sweep progress for every launcher: cells done of the total, how many diverged or failed so far, and an ETA.

A Hydra callback (`hydra.callbacks.progress` in train.yaml) watches the sweep directory from the launching process
— the cells' `summary.json` records are the truth, whichever launcher (sequential, parallel, batched, SLURM) runs
them — and reports a line: a bar on a terminal, and every `every_s` seconds (30 by default) a line in
`<sweep dir>/progress.log` and the log. It counts this launch's cells only (`cell_dirs`: several launches may share a
sweep directory); a sweep Hydra alone expands (`interval`, `glob`) shows every record below the directory and no
total.
"""
import logging
import math
import pathlib
import sys
import threading
import time

from hydra.experimental.callback import Callback
from omegaconf import Container, DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def cell_dirs(config: DictConfig) -> list[pathlib.Path] | None:
    """This launch's cell directories, named as its launcher names them: Hydra's basic sweeper's job list (the grid's
    keys, then the command line's), each job's `hydra.sweep.subdir` resolved on its config. A sweep directory may
    hold other launches' cells; only these count. The config is composed once per choice of config groups, the swept
    keys set on it per job (composing every cell costs ~0.1 s each). None where Hydra alone can enumerate the sweep
    (`interval`, `glob`)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    parser = OverridesParser.create()
    grid = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    parsed = parser.parse_overrides([*grid, *config.hydra.overrides.task])
    if any(o.is_sweep_override() and (not o.is_discrete_sweep() or isinstance(o.value(), Glob)) for o in parsed):
        return None
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    leaves = {k for k in swept if not isinstance(OmegaConf.select(config, k.lstrip("+~")), Container)}
    naming = config.hydra.job.config.override_dirname
    loader, composed, dirs = GlobalHydra.instance().config_loader(), {}, []
    for job in BasicSweeper.split_arguments(parsed, None)[0]:
        overrides = parser.parse_overrides(job)
        composing = tuple(line for o, line in zip(overrides, job) if o.get_key_element() not in leaves)  # groups, fixed
        if composing not in composed:
            composed[composing] = loader.load_sweep_config(config, list(composing))
        cfg = composed[composing]
        with open_dict(cfg):
            for o in overrides:
                if o.get_key_element() in leaves:
                    OmegaConf.update(cfg, o.key_or_group, o.value(), force_add=True)
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides, list(naming.exclude_keys), item_sep=naming.item_sep, kv_sep=naming.kv_sep)
        dirs.append(pathlib.Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir))
    return dirs


def tally(sweep_dir: pathlib.Path, steps: int | None = None, run_dirs: list[pathlib.Path] | None = None) -> dict:
    """Statuses of the records in `run_dirs` (all below `sweep_dir` when None), and the work done in cells: 1 per
    finished cell, the fraction of its `steps` for a running one (a batched group's cells all finish at its end, so
    counting finished cells alone would give no estimate until then)."""
    import json

    counts = {"converged": 0, "diverged": 0, "failed": 0, "skipped": 0, "error": 0, "running": 0, "work": 0.0}
    paths = sweep_dir.rglob("summary.json") if run_dirs is None else (d / "summary.json" for d in run_dirs)
    for path in paths:
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):  # not written yet, or replaced while read: counted on the next look
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
        self.run_dirs = cell_dirs(config)
        self.total = None if self.run_dirs is None else len(self.run_dirs)
        self.steps = OmegaConf.select(config, "train.steps")
        self.work_at_start = self._tally()["work"]  # a relaunch's finished cells are not its rate
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _tally(self) -> dict:
        return tally(self.sweep_dir, self.steps, self.run_dirs)

    def _line(self) -> str:
        return line(self._tally(), self.total, time.perf_counter() - self.started, self.work_at_start)

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
