"""One directory per run: config.yaml, metrics.csv, summary.json, each written atomically (design §4)."""
import json
import os
import pathlib
import tempfile

import pandas as pd

METRIC_COLUMNS = (
    "step", "lr", "train_loss", "train_acc", "grad_norm",
    "sharpness", "sharpness_threshold", "pre_sharpness", "pre_sharpness_threshold",
    "test_loss", "test_acc",
)
FINISHED = ("converged", "diverged", "failed", "skipped")  # skipped: train.skip_above (a smaller η_trgt stopped it)


def write_atomic(path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see a half-written file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; records are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def flat_config(config: dict, prefix: str = "") -> dict:
    """A resolved config (plain nested dicts) as {dotted key: leaf}; lists and empty dicts are leaves."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_metrics(run_dir, metrics: pd.DataFrame) -> None:
    """The contract's columns first (NaN where absent), then any extra diagnostics."""
    columns = list(METRIC_COLUMNS) + [c for c in metrics.columns if c not in METRIC_COLUMNS]
    frame = metrics.reindex(columns=columns)
    write_atomic(pathlib.Path(run_dir) / "metrics.csv", frame.to_csv(index=False, float_format="%.9g"))


def read_metrics(run_dir) -> pd.DataFrame:
    return pd.read_csv(pathlib.Path(run_dir) / "metrics.csv")


def write_summary(run_dir, summary: dict) -> None:
    write_atomic(pathlib.Path(run_dir) / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")


def read_summary(run_dir) -> dict | None:
    path = pathlib.Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_error(run_dir, err: BaseException) -> None:
    """Mark a run that raised: status `error` and the exception's one-line description. Not a result (an error is
    usually the machine's or the code's, not the hyperparameters'), so a relaunched sweep runs the cell again."""
    summary = read_summary(run_dir) or {}
    write_summary(run_dir, {**summary, "status": "error", "error": f"{type(err).__name__}: {err}"})


def finished_summary(run_dir) -> dict | None:
    """The summary of a run that is a result (converged / diverged / failed / skipped, not redone), else None."""
    summary = read_summary(run_dir)
    return summary if summary is not None and summary.get("status") in FINISHED else None
