import json
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from warmup import build, config, records, train
from warmup.catapult import first_direction
from warmup.run import execute
from conftest import CLI_ENV, TINY, compose_config


def test_run_writes_the_record_contract(run):
    run_dir, summary = run("schedule.lr_trgt_scale=1", "schedule.warmup_steps=5", "sharpness.every=5")
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.csv", "summary.json"}
    assert summary["status"] == "converged"
    on_disk = json.loads((run_dir / "summary.json").read_text())
    for key in ("status", "lambda0", "lr_trgt", "warmup_steps", "steps_completed", "final_train_loss",
                "final_train_acc", "final_test_loss", "best_test_acc", "diverged_step", "wall_time_s"):
        assert key in on_disk
    assert on_disk["steps_completed"] == 20 and on_disk["diverged_step"] is None
    assert on_disk["lr_trgt"] == pytest.approx(1 / on_disk["lambda0"])
    metrics = records.read_metrics(run_dir)
    assert list(metrics.columns[:len(records.METRIC_COLUMNS)]) == list(records.METRIC_COLUMNS)
    assert list(metrics.step) == list(range(21))  # one row per update, plus the final state at t = T
    lr = metrics.lr.to_numpy()[:20]
    np.testing.assert_allclose(lr, on_disk["lr_trgt"] * np.minimum(1, (np.arange(20) + 1) / 5), rtol=1e-6)
    measured = metrics.sharpness.notna().to_numpy()[:20]
    assert list(np.flatnonzero(measured)) == [0, 5, 10, 15]
    assert metrics.sharpness[0] == pytest.approx(on_disk["lambda0"], rel=1e-3)
    np.testing.assert_allclose(metrics.sharpness_threshold[:20], 2 / lr, rtol=1e-6)
    assert list(np.flatnonzero(metrics.test_acc.notna())) == [0, 10, 20]
    assert metrics.train_loss.iloc[-1] < metrics.train_loss.iloc[0]
    assert "lr_trgt_scale: 1" in (run_dir / "config.yaml").read_text()


@pytest.mark.slow  # the golden records (tests/test_golden.py) already pin every number of a rerun
def test_same_seed_same_metrics(run):
    overrides = ("schedule.lr_trgt=0.05", "data.batch_size=32", "data.augment.flip=true", "data.augment.crop=2",
                 "sharpness.every=7")
    first, _ = run(*overrides)
    second, _ = run(*overrides)
    third, _ = run(*overrides, "seed=1")
    assert (first / "metrics.csv").read_text() == (second / "metrics.csv").read_text()
    assert (first / "metrics.csv").read_text() != (third / "metrics.csv").read_text()


def test_huge_learning_rate_is_recorded_as_diverged(run):
    run_dir, summary = run("schedule.lr_trgt=1e6", "sharpness.every=1")
    assert summary["status"] == "diverged"
    metrics = records.read_metrics(run_dir)
    assert summary["diverged_step"] == metrics.step.iloc[-1] == summary["steps_completed"]
    assert summary["diverged_step"] < 20
    assert records.read_summary(run_dir)["status"] == "diverged"


@pytest.mark.parametrize("optimizer, options", [
    ("adam", ("sharpness.dtype=float64", "param.full_mup=true")),  # the float64 path, with per-layer rates in P
    ("gi_adam", ()), ("ri_adam", ()), ("radam", ())])
def test_adam_family_tracks_preconditioned_sharpness(run, optimizer, options):
    run_dir, summary = run(f"optimizer={optimizer}", "schedule.lr_trgt=1e-3", "sharpness.every=10", "param=mup",
                           *options)
    assert summary["status"] != "diverged"
    metrics = records.read_metrics(run_dir)
    measured = metrics[metrics.pre_sharpness.notna()]
    assert list(measured.step) == [0, 10]
    np.testing.assert_allclose(measured.pre_sharpness_threshold, 38 / measured.lr, rtol=1e-5)
    assert (measured.pre_sharpness > measured.sharpness).all()


@pytest.mark.parametrize("model", ["cnn", pytest.param("wrn", marks=pytest.mark.slow)])  # WRN: ~25 s on CPU
def test_conv_models_train_minibatch_with_augmentation(run, model):
    depth = {"cnn": 4, "wrn": 10}[model]
    run_dir, summary = run(f"model={model}", "model.width=1" if model == "wrn" else "model.width=8",
                           f"model.depth={depth}", "loss=xent", "schedule.lr_trgt_scale=1", "data.batch_size=32",
                           "data.augment.flip=true", "data.augment.crop=4", "data.augment.mixup_alpha=0.2",
                           "train.steps=8", "sharpness.every=4", "data.measure_examples=32")
    assert summary["status"] in ("converged", "failed") and summary["steps_completed"] == 8
    assert summary["measure_examples"] == 32
    assert records.read_metrics(run_dir).sharpness.notna().sum() == 2


def test_finished_run_is_skipped(run, data_root, tmp_path):
    run_dir, summary = run("schedule.lr_trgt=0.05")
    before = (run_dir / "metrics.csv").read_text()
    cfg = compose_config([*TINY, f"data.root={data_root}", "schedule.lr_trgt=0.05"])
    assert execute(cfg, run_dir) == summary
    assert (run_dir / "metrics.csv").read_text() == before


def test_finished_run_of_another_config_is_an_error_not_a_skip(run, data_root, tmp_path):
    run_dir, summary = run("schedule.lr_trgt=0.05", "+exp.title=original")
    before = (run_dir / "metrics.csv").read_text()
    changed = compose_config([*TINY, f"data.root={data_root}", "schedule.lr_trgt=0.05", "+exp.title=original",
                              "model.width=16"])
    with pytest.raises(config.ConfigError, match=f"^model.width=16: {re.escape(str(run_dir))} holds a finished run "
                                                "with model.width=32; launch into another"):
        execute(changed, run_dir)
    # another copy of the data may hold other files: two roots never share one record
    moved = compose_config([*TINY, f"data.root={tmp_path}", "schedule.lr_trgt=0.05", "+exp.title=original"])
    with pytest.raises(config.ConfigError, match=f"^data.root={re.escape(str(tmp_path))}: "):
        execute(moved, run_dir)
    # progress bars, chunking and the figure's labels do not change the numbers
    same = compose_config([*TINY, f"data.root={data_root}", "schedule.lr_trgt=0.05", "train.chunk_steps=5",
                           "train.progress=true", "+exp.title=relabelled"])
    assert execute(same, run_dir) == summary
    assert (run_dir / "metrics.csv").read_text() == before


def test_skip_above_matches_siblings_up_to_keys_that_do_not_change_the_numbers(data_root, tmp_path):
    def sibling(name, status, *overrides):
        cfg = compose_config([*TINY, f"data.root={data_root}", *overrides])
        (tmp_path / name).mkdir()
        records.write_atomic(tmp_path / name / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        records.write_summary(tmp_path / name, {"status": status})

    mine = compose_config([*TINY, f"data.root={data_root}", "schedule.lr_trgt_scale=2", "train.skip_above=diverged"])
    sibling("wider", "diverged", "schedule.lr_trgt_scale=1", "train.skip_above=diverged", "model.width=16")
    sibling("larger_lr", "diverged", "schedule.lr_trgt_scale=4", "train.skip_above=diverged")
    sibling("converged", "converged", "schedule.lr_trgt_scale=1", "train.skip_above=diverged")
    stopper = lambda: records.smaller_lr_that_stopped(OmegaConf.to_container(mine, resolve=True), tmp_path / "mine",
                                                      ("diverged",))
    assert stopper() is None
    sibling("rechunked", "diverged", "schedule.lr_trgt_scale=1", "train.skip_above=diverged", "train.chunk_steps=5",
            "+exp.title=relabelled")
    assert stopper() == tmp_path / "rechunked"


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "warmup.train", *args], capture_output=True, text=True,
                          env={**CLI_ENV, **(env or {})}, timeout=120)


def cli_in_process(*args, monkeypatch, capsys):
    """`python -m warmup.train ARGS` for a refusal that comes before Hydra starts: `train.main` in this process (no
    interpreter and JAX start-up per case). The CLI's own process is checked in
    test_bad_input_is_one_line_and_nonzero_before_training."""
    monkeypatch.setattr(sys, "argv", ["warmup.train", *args])
    with pytest.raises(SystemExit) as stopped:
        train.main()
    return subprocess.CompletedProcess(args, stopped.value.code, "", capsys.readouterr().err)


def assert_one_line_error(result, words):
    """Bad input: exit status 2 and a single `error: …` line on stderr that contains every one of `words`."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("override, message", [
    ("model.width=0", "model.width=0: must be an integer >= 1"),
    ("seed=abc", "seed=abc: must be an integer"),
    ("train.eval_batch=0", "train.eval_batch=0: must be an integer >= 1"),
    ("schedule.decay=maybe", "schedule.decay=maybe: must be true or false"),
    ("param.full_mup=1", "param.full_mup=1: must be true or false"),
    ("data.augment.flip=maybe", "data.augment.flip=maybe: must be true or false"),
    ("data.augment.mixup_alpha=-1", "data.augment.mixup_alpha=-1: must be a finite number >= 0"),
    ("sharpness.tol=-1", "sharpness.tol=-1: must be a finite number >= 0"),
    ("sharpness.init_tol=abc", "sharpness.init_tol=abc: must be a finite number >= 0"),
    ("sharpness.max_iters=0", "sharpness.max_iters=0: must be an integer >= 1"),
    ("sharpness.init_max_iters=2.5", "sharpness.init_max_iters=2.5: must be an integer >= 1"),
])
def test_bad_values_name_key_and_value(override, message):
    with pytest.raises(config.ConfigError, match="^" + re.escape(message)):
        config.validate(compose_config(["schedule.lr_trgt=0.1", override]))


@pytest.mark.parametrize("args, words", [  # one refusal of each kind: Hydra, config check, optimiser, data
    (["optimizer=adamw"], ["optimizer=adamw", "sgd", "gi_adam"]),
    (["schedule.lr_trgt=0.1", "schedule.nonsense=1"], ["nonsense"]),
    (["schedule.lr_trgt=-0.1"], ["schedule.lr_trgt=-0.1", "> 0"]),
    (["schedule.lr_trgt=0.1", "data=mnist", "data.root=/nonexistent"], ["mnist", "train-images-idx3-ubyte.gz"]),
    (["schedule.lr_trgt=0.1", "optimizer.momentum=1.5"], ["optimizer.momentum=1.5", "[0, 1)"]),
])
def test_bad_input_is_one_line_and_nonzero_before_training(args, words, tmp_path):
    result = cli(*args, f"hydra.run.dir={tmp_path / 'run'}", env={"HOME": str(tmp_path)})
    assert_one_line_error(result, words)
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_a_sweep_whose_later_dataset_is_missing_is_refused_before_hydra_starts(data_root, tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    result = cli_in_process("-m", "launcher=batched", "schedule.lr_trgt=0.1", "data=fashion_mnist,cifar10",
                            f"data.root={data_root}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                            monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_error(result, ["cifar10: need", "cifar-10-python.tar.gz", str(data_root)])
    assert not (tmp_path / "sweep").exists()


def test_printing_a_config_needs_no_data(tmp_path):
    result = cli("--cfg", "job", "+exp=fig1", "data.root=/nonexistent", env={"HOME": str(tmp_path)})
    assert result.returncode == 0 and "name: cifar10" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("args, words", [  # the config check's other refusals, which reach the CLI as the one above
    (["schedule.lr_trgt=0.1", "schedule.warmup_steps=0"], ["schedule.warmup_steps=0", ">= 1"]),
    (["schedule.lr_trgt=0.1", "data.num_examples=10", "data.batch_size=20"], ["data.batch_size=20", "num_examples"]),
    ([], ["schedule.lr_trgt", "lr_trgt_scale", "neither"]),
    (["schedule.lr_trgt=0.1", "schedule.lr_trgt_scale=2"], ["both"]),
    (["schedule.lr_trgt=0.1", "sharpness.method=qr"], ["sharpness.method=qr", "lanczos"]),
])
def test_bad_values_are_refused_in_one_line_naming_them(args, words):
    with pytest.raises(config.ConfigError) as refused:
        config.validate(compose_config(args))
    assert "\n" not in str(refused.value) and all(word in str(refused.value) for word in words)


def test_sharpness_dtype_must_be_float32_or_float64():
    config.validate(compose_config(["schedule.lr_trgt=0.1", "sharpness.dtype=float64"]))
    with pytest.raises(config.ConfigError, match="^sharpness.dtype=float16: unknown; allowed: float32, float64$"):
        config.validate(compose_config(["schedule.lr_trgt=0.1", "sharpness.dtype=float16"]))


@pytest.mark.parametrize("args, words", [
    (["schedule.lr_trgt=0.1", "optimizer=adam,adamw"], ["optimizer=adamw", "sgd", "gi_adam"]),
    (["schedule.lr_trgt=0.1,0.2", "schedule.nonsense=1"], ["schedule.nonsense"]),
    (["--multirun", "schedule.lr_trgt=0.1", "model.width=range(2,4)", "data=pydoc", "data.num_examples=64"],
     ["data.num_examples"]),
    (["--multirun", "schedule.lr_trgt=0.1", "schedule.warmup_steps=1,0"], ["schedule.warmup_steps=0", ">= 1"]),
    (["+exp=fig3_cpu", "schedule.lr_trgt_scale=1,-2"], ["schedule.lr_trgt_scale=-2", "> 0"]),
    (["+exp=fig4_cpu", "seed=0,1"], ["hydra.sweep.subdir=${optimizer.name}/lr", "seed=0 and seed=1", "${seed}"]),
    (["+exp=fig15_cpu", "param=sp,mup", "hydra.sweep.subdir=T${schedule.warmup_steps}"],
     ["param=sp and param=mup", "share the run directory T1", "${param.name}"]),
])
def test_bad_input_to_a_sweep_is_one_line_before_any_cell_runs(args, words, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    result = cli_in_process(*args, f"hydra.sweep.dir={tmp_path / 'sweep'}", monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_error(result, words)
    assert not (tmp_path / "sweep").exists()


def test_precheck_validates_every_value_of_an_experiments_grid(monkeypatch):
    seen = []
    monkeypatch.setattr(config, "validate", lambda cfg: seen.append(
        (cfg.param.name, cfg.loss.name, cfg.schedule.warmup_steps, cfg.schedule.lr_trgt_scale)))
    train.precheck(["+exp=fig3_cpu", "schedule.warmup_steps=2,3"])  # the command line replaces the grid's T_wrm
    grid = compose_config(["+exp=fig3_cpu"], with_hydra=True).hydra.sweeper.params
    for i, (key, values) in enumerate([("param", grid.param), ("loss", grid.loss), ("schedule.warmup_steps", "2,3"),
                                       ("schedule.lr_trgt_scale", grid["schedule.lr_trgt_scale"])]):
        as_seen = float if i == 3 else str
        assert {as_seen(v[i]) for v in seen} == {as_seen(x) for x in str(values).split(",")}, key


@pytest.mark.parametrize("overrides", [["schedule.lr_trgt=0.1", "optimizer=adam"], ["+exp=fig17_cpu", "seed=1"]])
def test_the_task_config_cut_from_hydras_equals_the_composed_one(overrides):
    """precheck validates a launch without an experiment grid on the config it composed with Hydra's node, cut."""
    cut, composed = train._task_config(compose_config(overrides, with_hydra=True)), compose_config(overrides)
    assert OmegaConf.is_struct(cut) and "hydra" not in cut
    assert OmegaConf.to_yaml(cut) == OmegaConf.to_yaml(composed)  # interpolations kept as written
    assert OmegaConf.to_yaml(cut, resolve=True) == OmegaConf.to_yaml(composed, resolve=True)


def test_a_seed_sweep_passes_once_its_cells_directories_name_the_seed():
    """The default subdir names every swept key; an experiment's own template must name the seed to sweep it."""
    train.precheck(["schedule.lr_trgt=0.1,0.2", "seed=1,2"], multirun=True)
    train.precheck(["+exp=fig4_cpu", "seed=0,1",
                    "hydra.sweep.subdir=${optimizer.name}/lr${schedule.lr_trgt}_T${schedule.warmup_steps}_s${seed}"])


def test_precheck_passes_valid_sweeps_and_leaves_glob_and_interval_to_hydra():
    train.precheck(["optimizer=adam,sgd", "schedule.lr_trgt=0.1,0.2", "model.width=range(8,32,8)"])
    train.precheck(["optimizer=glob(*adam)", "schedule.lr_trgt=interval(0.01,0.1)"])
    with pytest.raises(SystemExit):
        train.precheck(["optimizer=choice(adam,adamw)", "schedule.lr_trgt=0.1"])


def test_catapult_initialised_schedule_records_eta_c(run, data_root):
    overrides = ("schedule.lr_trgt_scale=8", "schedule.warmup_steps=16", "schedule.init=catapult")
    run_dir, summary = run(*overrides)
    eta_c, lr_trgt = summary["eta_c"], summary["lr_trgt"]
    assert summary["eta_c_found"] and 0 < eta_c < lr_trgt
    assert 1 / summary["lambda0"] < eta_c < 8 / summary["lambda0"]  # the first loss rise sits near 2/λ₀ᴴ (4.4/λ₀ᴴ)
    # What η_c means (paper §5): one real GD step θ₀ − η_c·g₀ raises the training loss, by at most δ = 0.1. (The
    # quadratic model's 2gᵀg/gᵀHg is exact only for a quadratic loss: tests/test_catapult.py; here it is ~2× off.)
    b = build.build(compose_config([*TINY, f"data.root={data_root}", *overrides]))
    loss = jax.jit(b.measurement_loss())
    d0 = first_direction(b.tx, jax.grad(loss)(b.params), b.params)
    loss0, stepped = float(loss(b.params)), float(loss(jax.tree.map(lambda p, d: p - eta_c * d, b.params, d0)))
    assert loss0 <= stepped <= 1.1 * loss0
    assert summary["t_reach"] == pytest.approx(16 * (1 - eta_c / lr_trgt))
    assert summary["t_save"] == pytest.approx(16 * eta_c / lr_trgt - summary["search_forward_passes"] / 2)
    lr = records.read_metrics(run_dir).lr.to_numpy()[:20]
    np.testing.assert_allclose(lr, np.minimum(eta_c + lr_trgt * np.arange(20) / 16, lr_trgt), rtol=1e-5)


def test_persistent_catapult_warmup_reaches_lr_trgt_without_decreasing_lr(run):
    run_dir, summary = run("schedule.lr_trgt_scale=8", "schedule.init=persistent", "train.steps=40",
                           "sharpness.every=1")
    assert summary["status"] == "converged" and summary["steps_completed"] == 40
    t_reach, lr_trgt = summary["t_reach"], summary["lr_trgt"]
    assert isinstance(t_reach, int) and 0 < t_reach < 40
    lr = records.read_metrics(run_dir).lr.to_numpy()[:40]
    assert (np.diff(lr) >= 0).all() and lr[0] < lr_trgt
    np.testing.assert_allclose(lr[t_reach:], lr_trgt, rtol=1e-6)
    events = summary["persistent_catapults"]
    assert events and all(e["start_step"] <= e["recovery_step"] <= t_reach for e in events)
    assert [e["lr"] for e in events] == sorted(e["lr"] for e in events)
    assert max(e["lr"] for e in events) <= lr_trgt


def run_cli(tmp_path, data_root, *args):
    return cli(*TINY, f"data.root={data_root}", *args, env={"HOME": str(tmp_path)})


def test_a_refused_relaunch_touches_nothing_and_the_log_holds_the_run(data_root, tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli(tmp_path, data_root, "schedule.lr_trgt=0.05", f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "converged after 20 steps" in (run_dir / "train.log").read_text()  # Python logging feeds train.log
    assert (run_dir / ".hydra" / "overrides.yaml").exists()
    files = sorted(p for p in run_dir.rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    refused = run_cli(tmp_path, data_root, "schedule.lr_trgt=0.05", "model.width=16", f"hydra.run.dir={run_dir}")
    assert_one_line_error(refused, ["model.width=16", "holds a finished run with model.width=32"])
    assert sorted(p for p in run_dir.rglob("*") if p.is_file()) == files
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before


@pytest.mark.parametrize("args, words", [
    (["schedule.warmup_step=10"], ["schedule.warmup_step: unknown key", "did you mean schedule.warmup_steps"]),
    (["+schedule.warmup_step=10"], ["schedule.warmup_step: unknown key", "did you mean schedule.warmup_steps"]),
    (["-cd", str(config.CONFIG_DIR), "schedule.lr_trgt=inf"], ["schedule.lr_trgt=inf", "finite"]),
    (["--cfg", "job", "schedule.lr_trgt=nan"], ["schedule.lr_trgt=nan", "finite"]),
    (["-m", "schedule.lr_trgt=0.1,inf"], ["schedule.lr_trgt=inf"]),
    (["-m", "schedule.lr_trgt=0.1", "data.num_examples=64,100000"], ["data.num_examples=100000", "60000"]),
])
def test_bad_keys_and_values_stop_before_anything_runs(args, words, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    result = cli_in_process(*args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                            monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_error(result, words)
    assert "+" not in result.stderr.split(":", 2)[-1].split("did you mean")[0]  # never Hydra's `+key` hint
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_an_unwritable_run_directory_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = cli("schedule.lr_trgt=0.1", f"hydra.run.dir={blocker / 'run'}", env={"HOME": str(tmp_path)})
    assert_one_line_error(result, ["hydra.run.dir=", str(blocker), "not a writable directory"])


def test_a_sweep_with_many_overrides_gets_a_short_cell_name(data_root, tmp_path):
    many = [f"+exp.note{i}=a_rather_long_value_{i}" for i in range(12)]
    result = cli("-m", *TINY, f"data.root={data_root}", "schedule.lr_trgt=0.05", "train.steps=2", *many,
                 f"hydra.sweep.dir={tmp_path / 'sweep'}", env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    (cell,) = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]
    assert len(cell.name.encode()) <= config.MAX_CELL_NAME and records.finished_summary(cell)["status"]


def test_a_relaunch_removes_what_a_killed_write_left(tmp_path):
    (tmp_path / ".metrics.csv.abc.tmp").write_text("half")
    records.start(tmp_path, {"seed": 0}, {"status": "running"})
    assert not list(tmp_path.glob(".*.tmp")) and records.read_summary(tmp_path)["status"] == "running"


def test_the_console_command_has_its_own_help_page():
    script = pathlib.Path(sys.executable).parent / "warmup-train"
    assert script.exists()  # [project.scripts]: Hydra's shell completion needs a command name
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=CLI_ENV, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("warmup-train — ")
    assert "schedule.lr_trgt=" in result.stdout and "schedule.lr_trgt_scale=" in result.stdout
    assert "optimizer: adam, gi_adam, radam, ri_adam, sgd" in result.stdout and "powered by Hydra" not in result.stdout
