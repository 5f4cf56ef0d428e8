"""Sweep results as tables: one row per run record (`collect`), mean ± std over seeds per grid cell (`aggregate`).

    df = collect("multirun/fig3")      # config columns + every summary field, one row per run
    cells = aggregate(df)              # per (config without seed): count, n_<status>, <result>_mean, <result>_std

Config columns are the run's resolved config.yaml, flattened to dotted keys, with the keys a table is usually sliced
by given short names (`ALIASES`: optimizer, param, loss, model, data, width, depth, batch_size, num_examples, steps,
warmup_steps, lr_init, lr_trgt_scale, seed). `schedule.lr_trgt` stays as given (null when η_trgt = c/λ₀ᴴ); the
summary's `lr_trgt` is the absolute η_trgt actually used and `c = lr_trgt·lambda0` its value in units of 1/λ₀ᴴ;
runs with an η_c search also get `t_reach_fraction` and `t_save_fraction` (T_reach, T_save over T_wrm).
"""
import json
import math
import pathlib

import pandas as pd
from omegaconf import OmegaConf

from warmup import records
from warmup.config import flat, is_result_key

ALIASES = {
    "optimizer.name": "optimizer", "param.name": "param", "loss.name": "loss", "model.name": "model",
    "data.name": "data", "model.width": "width", "model.depth": "depth", "data.batch_size": "batch_size",
    "data.num_examples": "num_examples", "train.steps": "steps", "schedule.warmup_steps": "warmup_steps",
    "schedule.lr_init": "lr_init", "schedule.lr_trgt_scale": "lr_trgt_scale",
}
FIRST = ("run", "status", "optimizer", "param", "loss", "model", "width", "depth", "data", "num_examples",
         "batch_size", "steps", "seed", "warmup_steps", "lr_init", "schedule.lr_trgt", "lr_trgt_scale", "lr_trgt",
         "c", "lambda0")


def config_columns(config: dict) -> dict:
    """A resolved config as {column: scalar}: dotted keys, `ALIASES` applied, hydra.* and the keys that do not
    change the numbers (`config.NOT_A_RESULT`) removed."""
    return {ALIASES.get(k, k): repr(v) if isinstance(v, (list, dict)) else v
            for k, v in flat(config).items() if is_result_key(k) and not k.startswith("hydra.")}


# What run records' summaries hold (train.execute, sweep.run_batched) plus `c`: never part of a cell's key.
RESULT_COLUMNS = (
    "run", "status", "lambda0", "lr_trgt", "c", "steps_completed", "diverged_step", "num_params",
    "measure_examples", "final_train_loss", "final_train_acc", "final_test_loss", "final_test_acc", "best_test_acc",
    "wall_time_s", "batched_cells", "eta_c", "t_reach", "t_save", "t_reach_fraction", "t_save_fraction",
)


def _config_keys(df: pd.DataFrame) -> list[str]:
    """`collect`'s config columns; for a frame read back from CSV/Parquet, every column not a known result."""
    if "config_columns" in df.attrs:
        return [k for k in df.attrs["config_columns"] if k in df.columns]
    return [c for c in df.columns if c not in RESULT_COLUMNS]


def collect(sweep_dir) -> pd.DataFrame:
    """One row per run record below `sweep_dir` (each summary.json with its config.yaml), sorted by path.

    `run` is the record's path relative to `sweep_dir`. Summary fields keep their names; a summary field that
    repeats a config column (warmup_steps, lr_trgt_scale) is taken from the config. `df.attrs["config_columns"]`
    lists the config columns (what `aggregate` groups by). A summary without a config.yaml is skipped with a
    warning; a sweep with no records gives an empty frame.
    """
    sweep_dir = pathlib.Path(sweep_dir)
    rows, config_keys = [], {}
    for path in sorted(sweep_dir.rglob("summary.json")):
        run_dir = path.parent
        if not (run_dir / "config.yaml").exists():
            print(f"warning: {run_dir}: summary.json without config.yaml, skipped")
            continue
        config = config_columns(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True))
        config_keys.update(dict.fromkeys(config))
        summary = json.loads(path.read_text())
        row = {"run": run_dir.relative_to(sweep_dir).as_posix(), **config,
               **{k: v for k, v in summary.items() if k not in config}}
        lr, lam = row.get("lr_trgt"), row.get("lambda0")
        row["c"] = lr * lam if isinstance(lr, (int, float)) and isinstance(lam, (int, float)) else math.nan
        for name in ("t_reach", "t_save"):  # the η_c search's savings as a fraction of the warmup (paper Fig. 5)
            if isinstance(row.get(name), (int, float)) and row.get("warmup_steps"):
                row[f"{name}_fraction"] = row[name] / row["warmup_steps"]
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df[[c for c in FIRST if c in df.columns] + [c for c in df.columns if c not in FIRST]]
    df.attrs["config_columns"] = list(config_keys)
    return df


def aggregate(df: pd.DataFrame, over: str = "seed", keys: list[str] | None = None) -> pd.DataFrame:
    """Mean and std (ddof 1; NaN for one run) of every numeric result per cell = config without `over`.

    Columns: the cell's config columns (`keys`, default: collect's config columns), `count` (runs in the cell),
    `n_<status>` (how many runs converged, diverged, failed, or are still running), then `<result>_mean` and
    `<result>_std` for every other numeric column. Missing results (e.g. the test accuracy of a diverged run) are
    skipped, so a mean is over the runs that have the value. Null config values (batch_size = full batch) form
    their own cells.
    """
    keys = [k for k in (keys if keys is not None else _config_keys(df)) if k != over and k in df.columns]
    if df.empty:
        return pd.DataFrame(columns=[*keys, "count"])
    table = df[keys].copy()
    if not keys:  # one cell
        table["_cell"] = 0
    group_by = keys or ["_cell"]
    counts = []
    if "status" in df.columns:
        for status in sorted(df["status"].dropna().unique()):
            table[f"n_{status}"] = (df["status"] == status).astype(int)
            counts.append(f"n_{status}")
    results = []
    for c in df.columns:
        if c in keys or c in (over, "run", "status"):
            continue
        values = pd.to_numeric(df[c], errors="coerce") if df[c].dtype == object else df[c]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) and values.notna().any():
            table[c] = values.astype(float)
            results.append(c)
    grouped = table.groupby(group_by, dropna=False, sort=True)
    out = grouped.size().rename("count").to_frame()
    if counts:
        out = out.join(grouped[counts].sum())
    if results:
        stats = grouped[results].agg(["mean", "std"])
        stats.columns = [f"{c}_{s}" for c, s in stats.columns]
        out = out.join(stats)
    return out.reset_index().drop(columns=["_cell"], errors="ignore")


def varying(df: pd.DataFrame) -> list[str]:
    """The config columns that take more than one value in `df` (the grid's axes)."""
    return [k for k in _config_keys(df) if k in df.columns and df[k].nunique(dropna=False) > 1]
