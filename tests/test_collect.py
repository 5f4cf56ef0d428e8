import math
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from warmup import collect, records
from conftest import TINY, compose_config

SCRIPT = pathlib.Path(__file__).parents[1] / "scripts" / "collect.py"


def write_record(run_dir, overrides, **summary):
    """A run record as train.execute leaves it (config.yaml + summary.json), without training."""
    cfg = compose_config([*TINY, *overrides])
    run_dir.mkdir(parents=True)
    records.write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    base = dict(status="converged", lambda0=4.0, lr_trgt=0.25, lr_trgt_scale=None, warmup_steps=cfg.schedule.warmup_steps,
                steps_completed=20, diverged_step=None, final_train_loss=0.1, final_train_acc=0.9,
                final_test_loss=0.2, final_test_acc=0.8, best_test_acc=0.8, wall_time_s=1.0)
    records.write_summary(run_dir, {**base, **summary})


@pytest.fixture
def sweep_dir(tmp_path):
    """2 T_wrm × 2 seeds at c = 1 (λ₀ᴴ differs per seed), 1 T_wrm at a fixed η with one diverged seed."""
    root = tmp_path / "sweep"
    for T in (1, 8):
        for seed, lam, acc in ((0, 4.0, 0.8), (1, 5.0, 0.6)):
            write_record(root / f"c1_T{T}_s{seed}", ["schedule.lr_trgt_scale=1", f"schedule.warmup_steps={T}",
                                                     f"seed={seed}"],
                         lambda0=lam, lr_trgt=1 / lam, lr_trgt_scale=1, final_test_acc=acc + T / 100)
    write_record(root / "fixed_s0", ["schedule.lr_trgt=2", "seed=0"], lr_trgt=2.0, final_test_acc=0.5)
    write_record(root / "fixed_s1", ["schedule.lr_trgt=2", "seed=1"], lr_trgt=2.0, status="diverged", diverged_step=3,
                 steps_completed=3, final_test_acc=None, final_test_loss=None, best_test_acc=0.1, lambda0=5.0)
    (root / "orphan").mkdir()
    records.write_summary(root / "orphan", dict(status="running"))  # no config.yaml: skipped
    return root


def test_collect_has_one_row_per_record_with_config_and_summary_columns(sweep_dir, capsys):
    df = collect.collect(sweep_dir)
    assert "orphan" in capsys.readouterr().out
    assert len(df) == 6 and list(df.run) == sorted(df.run)
    row = df.set_index("run").loc["c1_T8_s1"]
    assert (row.optimizer, row.param, row.loss, row.model, row.seed, row.warmup_steps) == ("sgd", "sp", "mse", "fcn", 1, 8)
    assert row.width == 32 and row.depth == 3 and row.steps == 20 and row.lr_trgt_scale == 1
    assert row.lr_trgt == pytest.approx(0.2) and row.c == pytest.approx(1.0) and row.final_test_acc == pytest.approx(0.68)
    assert pd.isna(row.batch_size) and pd.isna(row["schedule.lr_trgt"])
    fixed = df.set_index("run").loc["fixed_s1"]
    assert fixed.status == "diverged" and fixed.diverged_step == 3 and fixed.c == pytest.approx(10.0)
    for column in ("status", "lambda0", "steps_completed", "final_train_loss", "best_test_acc", "wall_time_s",
                   "sharpness.every", "data.augment.flip", "optimizer.momentum"):
        assert column in df.columns
    assert "train.progress" not in df.columns and "seed" in df.attrs["config_columns"]  # config.NOT_A_RESULT
    assert set(collect.varying(df)) == {"seed", "warmup_steps", "lr_trgt_scale", "schedule.lr_trgt"}


def test_aggregate_over_seeds(sweep_dir, tmp_path):
    df = collect.collect(sweep_dir)
    cells = collect.aggregate(df)
    assert len(cells) == 3 and "seed" not in cells.columns and (cells["count"] == 2).all()
    c1 = cells[cells.lr_trgt_scale == 1].set_index("warmup_steps")
    assert c1.loc[8, "final_test_acc_mean"] == pytest.approx(0.78)
    assert c1.loc[8, "final_test_acc_std"] == pytest.approx(np.std([0.88, 0.68], ddof=1))
    assert c1.loc[1, "c_mean"] == pytest.approx(1.0) and c1.loc[1, "lambda0_mean"] == pytest.approx(4.5)
    assert (c1.n_converged == 2).all() and (c1.n_diverged == 0).all()
    fixed = cells[cells["schedule.lr_trgt"] == 2].iloc[0]  # batch_size null and lr_trgt_scale null stay a cell
    assert (fixed.n_converged, fixed.n_diverged) == (1, 1)
    assert fixed.final_test_acc_mean == pytest.approx(0.5) and math.isnan(fixed.final_test_acc_std)
    assert fixed.steps_completed_mean == pytest.approx(11.5)
    # a table read back from CSV (no attrs) groups the same cells
    df.to_csv(tmp_path / "runs.csv", index=False)
    again = collect.aggregate(pd.read_csv(tmp_path / "runs.csv"))
    assert len(again) == 3 and sorted(again.final_test_acc_mean) == pytest.approx(sorted(cells.final_test_acc_mean))


def test_empty_sweep_gives_empty_tables(tmp_path):
    df = collect.collect(tmp_path)
    assert df.empty and collect.aggregate(df).empty


def test_script_writes_csv_and_parquet_and_prints_cells(sweep_dir, tmp_path):
    out = tmp_path / "tables" / "fig"
    result = subprocess.run([sys.executable, SCRIPT, str(sweep_dir), "--out", str(out)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "6 runs in 3 cells" in result.stdout and "warmup_steps" in result.stdout
    assert "Parquet NOT written" not in result.stderr
    for name, rows in (("fig_runs", 6), ("fig_cells", 3)):
        assert len(pd.read_csv(out.parent / f"{name}.csv")) == rows
        assert len(pd.read_parquet(out.parent / f"{name}.parquet")) == rows
    empty = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "nothing")], capture_output=True, text=True,
                           timeout=120)
    assert empty.returncode == 1 and "no run records" in empty.stderr
