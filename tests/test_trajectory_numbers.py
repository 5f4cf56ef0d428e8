"""scripts/trajectory_numbers.py: the per-run and per-seed numbers the experiment notes quote."""
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd

from warmup import records
from conftest import CLI_ENV

SCRIPT = pathlib.Path(__file__).parents[1] / "scripts" / "trajectory_numbers.py"


def write_seed(sweep, seed, catapult_at, lambda0, diverged=False, late_pre=None):
    """A 40-step run whose loss falls 10 % a step until it jumps ×3 (×2.7 over the step before) at `catapult_at` (or
    diverges there); with `late_pre`, λ^{P⁻¹H} is measured at 5× its threshold until step 32 and `late_pre`× after."""
    t = np.arange(40)
    loss = 0.9 ** t
    loss[catapult_at:] *= np.inf if diverged else 3.0
    threshold = np.full(40, 380.0)
    pre = np.nan if late_pre is None else threshold * np.where(t < 32, 5.0, late_pre)
    metrics = pd.DataFrame(dict(step=t, lr=np.full(40, 0.1), train_loss=loss, sharpness=np.full(40, 19.0),
                                pre_sharpness=pre, pre_sharpness_threshold=threshold))
    run_dir = sweep / f"sp_T1_s{seed}"
    records.write_config(run_dir, {"param": {"name": "sp"}, "schedule": {"warmup_steps": 1}, "seed": seed})
    records.write_metrics(run_dir, metrics)
    records.write_summary(run_dir, {"status": "diverged" if diverged else "converged", "lambda0": lambda0,
                                    "lr_trgt": 0.1, "warmup_steps": 1, "diverged_step": catapult_at,
                                    "final_train_loss": float(loss[-1])})


def numbers(sweep, *flags):
    result = subprocess.run([sys.executable, str(SCRIPT), str(sweep), *flags], capture_output=True, text=True,
                            env=CLI_ENV, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()


def test_seeds_are_summarised_as_mean_and_sample_std_and_divergence_is_not_a_catapult(tmp_path):
    for seed, (at, lambda0) in enumerate([(10, 30.0), (14, 34.0), (5, 26.0)]):
        write_seed(tmp_path, seed, at, lambda0, diverged=seed == 2)
    per_run = numbers(tmp_path)
    assert len(per_run) == 3 and "catapults=1 [t=10→10, ×2.7]" in per_run[0] and "diverged at step 5" in per_run[2]
    (line,) = numbers(tmp_path, "--seeds")
    assert line.strip().startswith("sp_T1: 3 seeds, 1 diverged (steps 5), 0 failed;")
    assert "λ₀ᴴ 30 ± 4;" in line  # all three seeds: mean 30, sample std 4
    assert "first catapult t 12 ± 2.83;" in line and "its size × 2.7 ± " in line  # the two that did not diverge
    assert "; largest × 2.7 ± " in line
    assert "late λᴴη 1.9 ± 0" in line and "λ^(P⁻¹H)_0" not in line  # never measured: left out


def test_the_late_preconditioned_sharpness_is_quoted_over_its_threshold(tmp_path):
    for seed, ratio in enumerate([0.5, 0.7]):
        write_seed(tmp_path, seed, 30, 30.0, late_pre=ratio)
    per_run = numbers(tmp_path)
    assert "λ^(P⁻¹H)_0=1.9e+03" in per_run[0] and "late λ^(P⁻¹H)/threshold=0.5 " in per_run[0]
    (line,) = numbers(tmp_path, "--seeds")
    assert "late λ^(P⁻¹H)/threshold 0.6 ± 0.141;" in line  # the last 20 % of steps only, not the 5× before


def test_a_run_with_more_than_four_catapults_also_names_its_largest(tmp_path):
    write_seed(tmp_path, 0, 10, 30.0)
    run_dir = tmp_path / "sp_T1_s0"
    metrics = pd.read_csv(run_dir / "metrics.csv")
    loss = 0.5 ** np.arange(40) * 1e3  # falls ×2 a step, with a jump of ×1.5 every 6 steps and one of ×9 at step 25
    for t in range(4, 40, 6):
        loss[t] = loss[t - 1] * 1.5
    loss[25] = loss[24] * 9.0
    metrics["train_loss"] = loss
    records.write_metrics(run_dir, metrics)
    (line,) = numbers(tmp_path)
    assert "catapults=7 " in line and line.endswith(" largest ×9 at t=25")
