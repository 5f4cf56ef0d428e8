"""One directory per run: config.yaml, metrics.csv, summary.json, each written atomically (design §4); and whether
a directory already holds this config's finished result (resume matching)."""
import json
import os
import pathlib
import shutil

import pandas as pd
from omegaconf import OmegaConf

from warmup.config import ConfigError, flat, is_result_key
from warmup.files import write_atomic

METRIC_COLUMNS = (
    "step", "lr", "train_loss", "train_acc", "grad_norm",
    "sharpness", "sharpness_threshold", "pre_sharpness", "pre_sharpness_threshold",
    "test_loss", "test_acc",
)
FINISHED = ("converged", "diverged", "failed", "skipped")  # skipped: train.skip_above (a smaller η_trgt stopped it)


def metric_columns(metrics: pd.DataFrame) -> list[str]:
    """The contract's columns first (NaN where absent), then any extra diagnostics."""
    return list(METRIC_COLUMNS) + [c for c in metrics.columns if c not in METRIC_COLUMNS]


def _csv(metrics: pd.DataFrame, columns: list[str], header: bool) -> str:
    return metrics.reindex(columns=columns).to_csv(index=False, header=header, float_format="%.9g")


def write_metrics(run_dir, metrics: pd.DataFrame) -> None:
    write_atomic(pathlib.Path(run_dir) / "metrics.csv", _csv(metrics, metric_columns(metrics), header=True))


def append_metrics(run_dir, rows: pd.DataFrame, columns: list[str]) -> None:
    """Append `rows` (in `columns`, the file's header) to metrics.csv, or start it with its header: one write of
    whole lines, flushed to disk, so a long run does not rewrite its history every chunk and a killed one leaves
    whole rows (a restarted run starts the file afresh: `start`)."""
    path = pathlib.Path(run_dir) / "metrics.csv"
    text = _csv(rows, columns, header=not path.exists()).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_metrics(run_dir) -> pd.DataFrame:
    return pd.read_csv(pathlib.Path(run_dir) / "metrics.csv")


def write_summary(run_dir, summary: dict) -> None:
    write_atomic(pathlib.Path(run_dir) / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")


def read_summary(run_dir) -> dict | None:
    path = pathlib.Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_config(run_dir, config: dict) -> None:
    write_atomic(pathlib.Path(run_dir) / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))


def read_config(run_dir) -> dict | None:
    path = pathlib.Path(run_dir) / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else None


def start(run_dir, config: dict, summary: dict, extra_files: dict[str, str] | None = None) -> None:
    """A fresh attempt: config.yaml, `extra_files` ({relative path: text}) and a `running` summary; what a killed
    attempt left (metrics, TensorBoard events, an offline W&B run, temporary files) is removed."""
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.csv").unlink(missing_ok=True)
    _remove_views_and_temporaries(run_dir)
    write_config(run_dir, config)
    for name, text in (extra_files or {}).items():
        write_atomic(run_dir / name, text)
    write_summary(run_dir, summary)


def write_error(run_dir, err: BaseException, config: dict) -> None:
    """Mark a run that raised: status `error` and the exception's one-line description (config.yaml too, if the
    run did not get that far, so tables still list the cell). Not a result (an error is usually the machine's or the
    code's, not the hyperparameters'), so a relaunched sweep runs the cell again."""
    if read_config(run_dir) is None:
        write_config(run_dir, config)
    summary = read_summary(run_dir) or {}
    write_summary(run_dir, {**summary, "status": "error", "error": f"{type(err).__name__}: {err}"})


def finished_summary(run_dir, config: dict | None = None) -> dict | None:
    """The summary of a run that is a result (converged / diverged / failed / skipped, not redone), else None.

    With `config` (the resolved config about to run there), a finished record of another config is a ConfigError
    naming the first differing key, not a result: relaunching into a record with changed settings would otherwise
    return the old results under the new ones. Keys that do not change the numbers (`config.NOT_A_RESULT`) and keys
    only one side has (a record written before the key existed) are not compared."""
    summary = read_summary(run_dir)
    if summary is None or summary.get("status") not in FINISHED:
        return None
    stored = read_config(run_dir)
    if config is not None and stored is not None and (key := _differing_result_key(stored, config)) is not None:
        raise ConfigError(f"{key}={flat(config)[key]}: {run_dir} holds a finished run with {key}={flat(stored)[key]}; "
                          "launch into another hydra.run.dir / hydra.sweep.dir, or remove that record")
    return summary


def _differing_result_key(stored: dict, given: dict) -> str | None:
    """The first result key whose values differ (keys only one side has are not compared), or None."""
    stored, given = flat(stored), flat(given)
    return next((k for k in sorted(stored.keys() & given.keys()) if is_result_key(k) and stored[k] != given[k]), None)


def interrupted_with(run_dir, config: dict) -> bool:
    """Whether `run_dir` holds a `running` record of this config (a killed or preempted attempt to resume)."""
    summary, stored = read_summary(run_dir), read_config(run_dir)
    return (summary is not None and summary.get("status") == "running" and stored is not None
            and _differing_result_key(stored, config) is None)


def resume(run_dir, config: dict, summary: dict, step: int, extra_files: dict[str, str] | None = None
           ) -> pd.DataFrame:
    """An interrupted run continued from its checkpoint at `step`: metrics.csv cut back to its rows before `step` (a
    killed run wrote rows past its newest checkpoint; the kept lines are not rewritten), the live views' files and
    temporary files removed (the views are rebuilt from the kept rows), `extra_files` and a `running` summary
    written. Returns the kept rows."""
    run_dir = pathlib.Path(run_dir)
    path = run_dir / "metrics.csv"
    kept = read_metrics(run_dir) if path.exists() else pd.DataFrame(columns=list(METRIC_COLUMNS))
    kept = kept[kept.step < step]
    if path.exists():
        write_atomic(path, "".join(path.read_text().splitlines(keepends=True)[:1 + len(kept)]))
    _remove_views_and_temporaries(run_dir)
    write_config(run_dir, config)
    for name, text in (extra_files or {}).items():
        write_atomic(run_dir / name, text)
    write_summary(run_dir, summary)
    return kept.reset_index(drop=True)


def _remove_views_and_temporaries(run_dir: pathlib.Path) -> None:
    for stale in (*run_dir.glob(".*.tmp"), *run_dir.glob("events.out.tfevents.*")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(run_dir / "wandb", ignore_errors=True)


def _cell_key(config: dict) -> dict:
    """A run's resolved config flattened, without η_trgt and the keys that do not change the numbers."""
    return {k: repr(v) for k, v in flat(config).items()
            if k not in ("schedule.lr_trgt", "schedule.lr_trgt_scale") and is_result_key(k)}


def smaller_lr_that_stopped(config: dict, run_dir, statuses: tuple[str, ...]) -> pathlib.Path | None:
    """The sibling record in `run_dir`'s sweep folder that stops this cell (`train.skip_above`): same config up to
    η_trgt, a smaller η_trgt (given the same way), and one of `statuses`. This is how the paper swept: each T_wrm's
    η axis ends at its first divergence / failure."""
    run_dir = pathlib.Path(run_dir)
    which = "lr_trgt" if config["schedule"]["lr_trgt"] is not None else "lr_trgt_scale"
    key = _cell_key(config)
    for sibling in sorted(run_dir.parent.iterdir()) if run_dir.parent.is_dir() else ():
        summary = read_summary(sibling) if sibling != run_dir and sibling.is_dir() else None
        theirs = read_config(sibling) if summary is not None and summary.get("status") in statuses else None
        if theirs is None:
            continue
        lr = theirs["schedule"].get(which)
        if lr is not None and lr < config["schedule"][which] and _cell_key(theirs) == key:
            return sibling
    return None
