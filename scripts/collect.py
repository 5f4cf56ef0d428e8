"""Collect a sweep's run records into tables (CSV and Parquet) and print the per-cell summary.

    python scripts/collect.py multirun/fig3 [--out multirun/fig3/table]

Writes OUT_runs.{csv,parquet} (one row per run: config columns + every summary field, see warmup.collect) and
OUT_cells.{csv,parquet} (mean ± std over seeds per grid cell, with counts), then prints the cells table restricted to
the grid's axes and the main results. OUT defaults to SWEEP_DIR/table.
"""
import argparse
import pathlib
import sys

import pandas as pd

from warmup.collect import aggregate, collect, varying

SHOWN = ("count", "n_converged", "n_diverged", "n_failed", "n_running", "lambda0_mean", "c_mean",
         "steps_completed_mean", "final_train_loss_mean", "final_test_acc_mean", "final_test_acc_std",
         "best_test_acc_mean", "final_test_loss_mean", "eta_c_mean", "t_save_mean")


def write(df: pd.DataFrame, stem: pathlib.Path) -> bool:
    """stem.csv and stem.parquet; False (with the reason on stderr) when Parquet could not be written."""
    df.to_csv(stem.with_suffix(".csv"), index=False)
    try:
        # object columns that mix types (e.g. a config key null in some runs, text in others) become text
        frame = df.copy()
        for c in frame.columns[frame.dtypes == object]:
            if frame[c].dropna().map(type).nunique() > 1:
                frame[c] = frame[c].map(lambda v: None if v is None else str(v))
        frame.attrs = {}
        frame.to_parquet(stem.with_suffix(".parquet"), index=False)
        return True
    except Exception as err:  # pyarrow missing or a column it cannot store: the CSV is still there
        print(f"warning: Parquet NOT written for {stem.name} ({type(err).__name__}: {err}); the CSV is complete",
              file=sys.stderr)
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=pathlib.Path, help="a directory holding run records (e.g. multirun/fig3)")
    parser.add_argument("--out", type=pathlib.Path, help="output path stem (default: SWEEP_DIR/table)")
    args = parser.parse_args()
    runs = collect(args.sweep_dir)
    if runs.empty:
        print(f"error: no run records (summary.json with config.yaml) below {args.sweep_dir}", file=sys.stderr)
        return 1
    cells = aggregate(runs)
    out = args.out or args.sweep_dir / "table"
    out.parent.mkdir(parents=True, exist_ok=True)
    stems = (out.with_name(out.name + "_runs"), out.with_name(out.name + "_cells"))
    parquet_ok = [write(df, stem) for df, stem in zip((runs, cells), stems)]
    axes = [k for k in varying(runs) if k != "seed"]
    shown = cells[[c for c in (*axes, *SHOWN) if c in cells.columns]]
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_columns", 30):
        print(shown.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    written = [f"{s}.csv" for s in stems] + [f"{s}.parquet" for s, ok in zip(stems, parquet_ok) if ok]
    print(f"{len(runs)} runs in {len(cells)} cells; wrote {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
