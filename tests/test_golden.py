"""Golden run records: refactors must not change the numbers.

Each case trains a tiny run (or a 4-cell batched sweep) on the synthetic fixtures and compares its metrics.csv and
summary.json (without `wall_time_s`) with the copies under tests/golden/, recorded before the run lifecycle was
restructured (issue #25). Step counts, solver iterations, statuses and which entries are missing must match exactly;
floats to within RTOL, because XLA's CPU results differ across processors in the last digits (an AVX2 AMD EPYC
differs from the machine that made these records by at most 3·10⁻⁶ relative). An eigen-solver's final residual is
rounding noise by construction and is held to RESIDUAL_RTOL. A change that moves any number further fails.
To re-record on purpose (on the commit before a change, then compare after it):
    WARMUP_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py -n 0
"""
import json
import math
import os
import pathlib
import shutil

import pandas as pd
import pytest

from warmup import records, run, sweep
from conftest import TINY, compose_config

GOLDEN = pathlib.Path(__file__).parent / "golden"
RECORD = os.environ.get("WARMUP_RECORD_GOLDEN") == "1"
RTOL = 1e-5
RESIDUAL_RTOL = 0.5
LM = [o for o in TINY if not o.startswith("data.num_examples")] + [
    "model=transformer", "model.width=16", "model.depth=2", "model.heads=2", "data=wikitext2", "data.vocab_size=64",
    "data.context=8", "data.batch_size=8", "data.measure_examples=8", "optimizer=adam", "schedule.lr_trgt=1e-2",
    "schedule.warmup_steps=5", "sharpness.every=5"]
RUNS = {
    "gd_tracked": ["optimizer.momentum=0.9", "schedule.lr_trgt_scale=2", "schedule.warmup_steps=5",
                   "sharpness.every=1"],
    "adam_minibatch_augmented": ["optimizer=adam", "schedule.lr_trgt=1e-3", "data.batch_size=32",
                                 "data.augment.flip=true", "data.augment.crop=2", "sharpness.every=5"],
    "catapult": ["schedule.init=catapult", "schedule.lr_trgt_scale=16", "schedule.warmup_steps=10",
                 "sharpness.every=5"],  # η_c found, the catapult check recovers
    "persistent": ["schedule.init=persistent", "schedule.lr_trgt_scale=40", "sharpness.every=3"],  # two catapults
}
CELLS = [("schedule.lr_trgt_scale=1", "schedule.warmup_steps=1"), ("schedule.lr_trgt_scale=1", "schedule.warmup_steps=8"),
         ("schedule.lr_trgt=3.0", "schedule.warmup_steps=1"), ("schedule.lr_trgt=3.0", "schedule.warmup_steps=8")]


def _records(run_dir: pathlib.Path) -> dict[str, object]:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("wall_time_s")
    return {"metrics.csv": pd.read_csv(run_dir / "metrics.csv"), "summary.json": summary}


def _assert_close(got, want, where: str) -> None:
    """Exact for strings, booleans, integers and NaN/missing entries; floats to within RTOL (RESIDUAL_RTOL)."""
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), f"{where}: keys differ"
        for key in want:
            _assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{where}: length differs"
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool) and isinstance(got, (int, float)):
        rtol = RESIDUAL_RTOL if "residual" in where else RTOL
        assert got == pytest.approx(want, rel=rtol, abs=0, nan_ok=True), f"{where}: {got!r} != {want!r}"
    else:
        assert got == want and type(got) is type(want), f"{where}: {got!r} != {want!r}"


def _compare(name: str, run_dir: pathlib.Path) -> None:
    for file, got in _records(run_dir).items():
        golden = GOLDEN / name / file
        if RECORD:
            golden.parent.mkdir(parents=True, exist_ok=True)
            if file == "metrics.csv":
                shutil.copy(run_dir / file, golden)
            else:
                golden.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        if file == "metrics.csv":
            want = pd.read_csv(golden)
            assert list(got.columns) == list(want.columns) and len(got) == len(want), f"{name}/{file}: shape differs"
            got, want = got.to_dict("list"), want.to_dict("list")
        else:
            want = json.loads(golden.read_text())
        _assert_close(got, want, f"{name}/{file}")


@pytest.mark.parametrize("name", RUNS)
def test_single_runs_match_their_golden_records(name, data_root, tmp_path):
    cfg = compose_config([*TINY, f"data.root={data_root}", *RUNS[name]])
    run.execute(cfg, tmp_path / name)
    _compare(name, tmp_path / name)


def test_language_model_matches_its_golden_record(text_root, tmp_path):
    summary = run.execute(compose_config([*LM, f"data.root={text_root}"]), tmp_path / "lm")
    _compare("lm", tmp_path / "lm")
    # what the record means, so that a re-recorded golden copy is still checked
    assert summary["status"] == "converged" and summary["steps_completed"] == 20
    assert summary["final_test_perplexity"] == pytest.approx(math.exp(summary["final_test_loss"]), rel=1e-6)
    metrics = records.read_metrics(tmp_path / "lm")
    assert list(metrics.step) == list(range(21))
    assert math.log(64) < metrics.train_loss.iloc[0] < math.log(64) + 1  # SP: logits of variance ~1 at init
    assert metrics.train_loss.iloc[-1] < 0.7 * metrics.train_loss.iloc[0]
    measured = metrics[metrics.pre_sharpness.notna()]
    assert list(measured.step) == [0, 5, 10, 15] and (measured.pre_sharpness > measured.sharpness).all()
    assert metrics.sharpness[0] == pytest.approx(summary["lambda0"], rel=1e-2)


def test_batched_sweep_matches_its_golden_records(data_root, tmp_path):
    cfgs = [compose_config([*TINY, f"data.root={data_root}", "sharpness.every=5", *cell]) for cell in CELLS]
    dirs = [tmp_path / f"cell{i}" for i in range(len(cfgs))]
    sweep.run_grid(cfgs, dirs)
    for i, run_dir in enumerate(dirs):
        _compare(f"batched_cell{i}", run_dir)
