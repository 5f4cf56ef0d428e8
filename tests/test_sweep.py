import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from warmup import config, records, sweep
from warmup.run import execute
from conftest import CLI_ENV, TINY, compose_config

# (overrides, expected status): a 2 η × 2 T_wrm grid over two seeds (so the training subset, the initial
# parameters and λ₀ᴴ differ per cell), one η given as c/λ₀ᴴ; η = 3 without warmup diverges after a few steps
# while η = 3 with T_wrm = 5 (and the rest) trains on in the same program.
CELLS = [
    (("schedule.lr_trgt=0.5", "schedule.warmup_steps=1", "seed=0"), "converged"),
    (("schedule.lr_trgt_scale=2", "schedule.warmup_steps=5", "seed=1"), "converged"),
    (("schedule.lr_trgt=3.0", "schedule.warmup_steps=1", "seed=0"), "diverged"),
    (("schedule.lr_trgt=3.0", "schedule.warmup_steps=5", "seed=1"), "converged"),
    (("schedule.lr_trgt=0.5", "schedule.warmup_steps=10", "schedule.init=catapult", "seed=0"), "converged"),
]
COMMON = ("sharpness.every=5",)
COMPARED = ("step", "lr", "train_loss", "train_acc", "sharpness", "sharpness_threshold", "test_loss", "test_acc")


def configs(data_root, cells=CELLS, extra=()):
    return [compose_config([*TINY, f"data.root={data_root}", *COMMON, *overrides, *extra]) for overrides, _ in cells]


@pytest.fixture(scope="module")
def grid(data_root, tmp_path_factory):
    """The grid trained once batched and once cell by cell with train.execute."""
    root = tmp_path_factory.mktemp("sweep")
    cfgs = configs(data_root)
    batched_dirs = [root / "batched" / f"cell{i}" for i in range(len(cfgs))]
    batched = sweep.run_batched(cfgs, batched_dirs)
    sequential = [execute(cfg, root / "sequential" / f"cell{i}") for i, cfg in enumerate(cfgs)]
    return cfgs, batched_dirs, batched, [root / "sequential" / f"cell{i}" for i in range(len(cfgs))], sequential


def assert_same_run(dir_a, summary_a, dir_b, summary_b, columns=COMPARED):
    for key in ("status", "steps_completed", "diverged_step", "warmup_steps", "num_params", "measure_examples",
                "lr_trgt_scale", "eta_c_found", "search_forward_passes"):
        assert summary_a.get(key) == summary_b.get(key), key
    for key in ("lambda0", "lr_trgt", "final_train_loss", "final_train_acc", "final_test_loss", "final_test_acc",
                "best_test_acc", "eta_c", "t_reach", "t_save"):
        if summary_b.get(key) is None:
            assert summary_a.get(key) is None, key
        else:
            assert summary_a[key] == pytest.approx(summary_b[key], rel=1e-4, abs=1e-6), key
    a, b = records.read_metrics(dir_a), records.read_metrics(dir_b)
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for column in columns:
        np.testing.assert_allclose(a[column], b[column], rtol=1e-4, atol=1e-6, err_msg=column)
    assert (dir_a / "config.yaml").read_text() == (dir_b / "config.yaml").read_text()


def test_batched_cells_equal_sequential_runs(grid):
    cfgs, batched_dirs, batched, sequential_dirs, sequential = grid
    for i, (_, status) in enumerate(CELLS):
        assert batched[i]["status"] == status
        assert batched[i] == records.read_summary(batched_dirs[i])
        assert batched[i]["batched_cells"] == len(CELLS)
        assert_same_run(batched_dirs[i], batched[i], sequential_dirs[i], sequential[i])
    diverged = batched[2]
    assert 1 < diverged["diverged_step"] < 20 and records.read_metrics(batched_dirs[2]).step.iloc[-1] < 20
    for i in (0, 1, 3, 4):
        assert batched[i]["steps_completed"] == 20 and list(records.read_metrics(batched_dirs[i]).step) == list(range(21))
    assert batched[0]["lambda0"] != batched[1]["lambda0"]  # two seeds, two initialisations
    assert batched[1]["lr_trgt"] == pytest.approx(2 / batched[1]["lambda0"])
    assert "eta_c" in batched[4] and "eta_c" not in batched[0]  # the catapult-initialised cell searched η_c


def test_cells_mapped_in_turn_equal_vmapped_cells(grid, data_root, tmp_path):
    """cell_axis="map" (conv nets on CPU) steps the same group through `lax.map`: the same records as vmap."""
    cfgs, batched_dirs, batched, _, _ = grid
    mapped = sweep.run_batched(cfgs, [tmp_path / f"cell{i}" for i in range(len(cfgs))], cell_axis="map")
    for i in range(len(cfgs)):
        assert_same_run(tmp_path / f"cell{i}", mapped[i], batched_dirs[i], batched[i])
    with pytest.raises(config.ConfigError, match="cell_axis='grouped': must be one of auto, vmap, map"):
        sweep.run_batched(cfgs, [tmp_path / "x"] * len(cfgs), cell_axis="grouped")


@pytest.mark.slow  # ~20 s on 2 cores: the fast suite stays near 7 minutes
def test_float64_measurements_batch_like_sequential_runs(data_root, tmp_path):
    """vmap re-traces the measurement when it batches the program, outside the loop's float64 context (which failed
    to lower before the batch was run in the measurement's precision mode); it must give the sequential records."""
    cfgs = configs(data_root, CELLS[:2], extra=("sharpness.dtype=float64",))
    batched = sweep.run_batched(cfgs, [tmp_path / "batched" / f"cell{i}" for i in range(2)])
    for i, cfg in enumerate(cfgs):
        sequential = execute(cfg, tmp_path / "sequential" / f"cell{i}")
        assert_same_run(tmp_path / "batched" / f"cell{i}", batched[i], tmp_path / "sequential" / f"cell{i}", sequential)
        assert records.read_metrics(tmp_path / "batched" / f"cell{i}").sharpness.notna().sum() == 4


ADAM_CELLS = [  # plain Adam at three η (two seeds): the first two train, η = 0.3 without warmup diverges
    (("schedule.lr_trgt=1e-3", "seed=0"), "converged"),
    (("schedule.lr_trgt=1e-2", "schedule.warmup_steps=5", "seed=1"), "converged"),
    (("schedule.lr_trgt=0.3", "seed=0"), "diverged"),
]


def test_adam_cells_batch_like_sequential_runs(data_root, tmp_path):
    """An Adam group: its state (m, v, count) is stacked and vmapped with the rest, and λ^{P⁻¹H} is measured from it
    per cell; statuses, losses, λᴴ and λ^{P⁻¹H} must equal the cells trained one by one."""
    cfgs = configs(data_root, ADAM_CELLS, extra=("optimizer=adam",))
    batched = sweep.run_batched(cfgs, [tmp_path / "batched" / f"cell{i}" for i in range(len(cfgs))])
    for i, (cfg, (_, status)) in enumerate(zip(cfgs, ADAM_CELLS)):
        sequential = execute(cfg, tmp_path / "sequential" / f"cell{i}")
        assert batched[i]["status"] == sequential["status"] == status
        assert_same_run(tmp_path / "batched" / f"cell{i}", batched[i], tmp_path / "sequential" / f"cell{i}",
                        sequential, columns=(*COMPARED, "pre_sharpness", "pre_sharpness_threshold"))
    metrics = records.read_metrics(tmp_path / "batched" / "cell1")
    assert metrics.pre_sharpness.notna().sum() == 4 and (metrics.pre_sharpness.dropna() > 0).all()
    assert batched[2]["diverged_step"] < 20


def test_relaunch_skips_finished_cells_and_redoes_unfinished(grid, tmp_path, caplog):
    cfgs, batched_dirs, batched, _, _ = grid
    dirs = [tmp_path / d.name for d in batched_dirs]
    for src, dst in zip(batched_dirs, dirs):
        shutil.copytree(src, dst)
    # cell 1 was killed mid-run: its summary says running and its metrics are cut short
    summary = json.loads((dirs[1] / "summary.json").read_text())
    records.write_summary(dirs[1], {**summary, "status": "running", "steps_completed": 8})
    records.write_metrics(dirs[1], records.read_metrics(dirs[1]).iloc[:8])
    before = {i: (dirs[i] / "metrics.csv").read_text() for i in (0, 2, 3, 4)}
    with caplog.at_level("INFO", logger="warmup"):
        summaries = sweep.run_batched(cfgs, dirs)
    assert caplog.text.count("already finished") == 4
    for i in (0, 2, 3, 4):
        assert (dirs[i] / "metrics.csv").read_text() == before[i]
        assert summaries[i] == batched[i]
    assert summaries[1]["batched_cells"] == 1
    assert_same_run(dirs[1], summaries[1], batched_dirs[1], batched[1])


def test_relaunch_with_another_config_stops_before_training(grid, data_root):
    cfgs, batched_dirs, _, _, _ = grid
    before = [(d / "metrics.csv").read_text() for d in batched_dirs]
    with pytest.raises(config.ConfigError, match="^sharpness.every=1: .*cell0 holds a finished run with sharpness.every=5"):
        sweep.run_batched(configs(data_root, extra=("sharpness.every=1",)), batched_dirs)
    assert [(d / "metrics.csv").read_text() for d in batched_dirs] == before


@pytest.mark.parametrize("override, key", [
    ("model.width=16", "model.width"),
    ("optimizer=adam", "optimizer.name"),
    ("data.batch_size=32", "data.batch_size"),
    ("train.steps=30", "train.steps"),
    ("sharpness.every=1", "sharpness.every"),
])
def test_cells_differing_in_static_keys_are_refused(data_root, tmp_path, override, key):
    cfgs = configs(data_root, CELLS[:2])
    cfgs[1] = compose_config([*TINY, f"data.root={data_root}", *COMMON, *CELLS[1][0], override])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        sweep.run_batched(cfgs, [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists()  # refused before anything is built or written
    assert sweep.partition(cfgs) == [[0], [1]]


def test_random_v0_adam_refuses_mixed_seeds_and_partition_splits_them(data_root, tmp_path):
    cfgs = configs(data_root, CELLS[:2], extra=("optimizer=ri_adam",))
    with pytest.raises(ValueError, match="seed"):
        sweep.run_batched(cfgs, [tmp_path / "a", tmp_path / "b"])
    assert sweep.partition(cfgs) == [[0], [1]]
    assert sweep.partition(configs(data_root)) == [list(range(len(CELLS)))]
    with pytest.raises(ValueError, match="run directories"):
        sweep.run_batched(cfgs, [tmp_path / "a"])


def test_persistent_catapult_warmup_is_refused_by_the_batched_runner(data_root, tmp_path):
    cfgs = configs(data_root, CELLS[:2], extra=("schedule.init=persistent",))
    with pytest.raises(ValueError, match=r"schedule\.init=persistent"):
        sweep.run_batched(cfgs, [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists()


def test_a_group_that_raises_records_its_unfinished_cells_as_errors(data_root, tmp_path, monkeypatch):
    cfgs = configs(data_root, CELLS[:2])
    dirs = [tmp_path / "done", tmp_path / "interrupted"]

    def finish_one_then_fail(group_cfgs, group_dirs, cell_axis):
        group_dirs[0].mkdir()
        records.write_summary(group_dirs[0], {"status": "converged"})
        raise RuntimeError("out of memory")

    monkeypatch.setattr(sweep, "run_batched", finish_one_then_fail)
    results = sweep.run_grid(cfgs, dirs)
    assert results[0] == {"status": "converged"} == records.read_summary(dirs[0])
    assert isinstance(results[1], RuntimeError)
    assert records.read_summary(dirs[1]) == {"status": "error", "error": "RuntimeError: out of memory"}


SHARDED = """
import json, pathlib, sys
import jax, numpy as np, pandas as pd
jax.config.update("jax_threefry_partitionable", False)
sys.path.insert(0, sys.argv[1])
import conftest, test_golden
from warmup import loop, sweep
assert jax.device_count() == 4
state = sweep._place(4, (jax.numpy.zeros((4, 3)),), loop.Arrays(*[jax.numpy.zeros((5,))] * 7), loop.Arrays(*[None] * 7))[0]
assert len(state.sharding.device_set) == 4
cfgs = [conftest.compose_config([*conftest.TINY, f"data.root={sys.argv[2]}", "sharpness.every=5", *cell])
        for cell in test_golden.CELLS]
dirs = [pathlib.Path(sys.argv[3]) / f"cell{i}" for i in range(len(cfgs))]
sweep.run_grid(cfgs, dirs)
for i, d in enumerate(dirs):
    golden = test_golden.GOLDEN / f"batched_cell{i}"
    assert json.loads((d / "summary.json").read_text())["status"] == json.loads((golden / "summary.json").read_text())["status"]
    ours, theirs = pd.read_csv(d / "metrics.csv"), pd.read_csv(golden / "metrics.csv")
    assert list(ours.step) == list(theirs.step)
    for column in ("lr", "train_loss", "train_acc", "grad_norm", "sharpness", "test_loss", "test_acc"):
        np.testing.assert_allclose(ours[column], theirs[column], rtol=1e-5, err_msg=column)
print("sharded records match")
"""


def test_cells_sharded_over_four_devices_match_the_one_device_records(data_root, tmp_path):
    """The batched runner shards the cell axis over all local devices; its records equal the one-device run (the
    golden batched cells) to float rounding (XLA partitions the program, which reorders a few sums; η of the
    `lr_trgt_scale` cells is c/λ₀, so it carries λ₀'s rounding)."""
    env = {**CLI_ENV, "XLA_FLAGS": f"{CLI_ENV['XLA_FLAGS']} --xla_force_host_platform_device_count=4"}
    result = subprocess.run([sys.executable, "-c", SHARDED, str(pathlib.Path(__file__).parent), str(data_root),
                             str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "sharded records match" in result.stdout, result.stderr[-3000:]
