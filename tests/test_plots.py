import pathlib
import re
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from omegaconf import OmegaConf

from warmup import config, plots, records, train
from conftest import CLI_ENV, compose_config

EXPERIMENTS = sorted(p.stem for p in (config.CONFIG_DIR / "exp").glob("*.yaml"))


@pytest.fixture(autouse=True)
def close_figures():
    """The tests inspect figures they never save (`plots.save` closes its own); close them after each test."""
    yield
    plt.close("all")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = compose_config([f"+exp={name}"])
    train.precheck([f"+exp={name}"])  # every cell of its grid validates
    composed_kind = cfg.exp.get("kind", "trajectory")
    assert cfg.exp.name == name and kind(name) == composed_kind  # the collection-time shortcut reads it right
    if composed_kind == "phase":
        values = [cfg.exp.value] if isinstance(cfg.exp.value, str) else list(cfg.exp.value)
        assert set(values) <= set(plots.VALUE_LABELS) and cfg.exp.x in plots.AXIS_LABELS
    else:
        assert set(cfg.exp.panels) <= set(plots.PANELS)
        if any("sharpness" in plots.PANELS[p].column for p in cfg.exp.panels):  # measured at t = 0, k, 2k, … < T
            measured = (cfg.train.steps - 1) // cfg.sharpness.every + 1 if cfg.sharpness.every else 1
            assert measured >= 3, "the sharpness panel would show λ₀ᴴ alone (or two points), not a curve"


def kind(name) -> str:
    """The experiment's `exp.kind`, read from its file or else its parent experiments' (the `defaults` not under
    /), without Hydra: composing every experiment at collection cost each test process ~15 s."""
    text = OmegaConf.load(config.CONFIG_DIR / "exp" / f"{name}.yaml")
    parents = [d for d in text.get("defaults", []) if isinstance(d, str) and not d.startswith("/") and d != "_self_"]
    return OmegaConf.select(text, "exp.kind") or (kind(parents[-1]) if parents else "trajectory")


# The trajectory figures at CPU scale; not the trends (figN_width_cpu, figN_batch_cpu, …): they sweep what these
# end-to-end tests shrink, and their runs are ordinary runs of the figure they extend.
CPU_EXPERIMENTS = [name for name in EXPERIMENTS if re.fullmatch(r"fig\d+_cpu", name) and kind(name) == "trajectory"]
PHASE_CPU_EXPERIMENTS = [name for name in EXPERIMENTS if name.endswith("_cpu") and kind(name) == "phase"]


def tiny_lm_data(text_root) -> list[str]:
    """Overrides that shrink a Transformer experiment to a tiny LM on the fixture's WikiText-layout corpus."""
    return ["data=wikitext2", f"data.root={text_root}", "data.vocab_size=64", "data.context=8", "model.heads=2",
            "data.batch_size=8", "data.measure_examples=8"]


FAST = {"fig1_cpu"}  # the GD panel family (the main job); the rest (Adam, momentum, …) are slow


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in CPU_EXPERIMENTS])
def test_shrunken_experiment_runs_end_to_end_and_renders(name, data_root, text_root, tmp_path):
    cfg = compose_config([f"+exp={name}"], with_hydra=True)
    if cfg.model.name == "transformer":
        data = tiny_lm_data(text_root)
    else:
        minibatch = ["data.batch_size=16", "data.measure_examples=32"] if cfg.data.batch_size else []
        data = [f"data.root={data_root}", "data.num_examples=64", *minibatch]
    by_warmup = cfg.exp.color_by == "schedule.warmup_steps"  # else the experiment's own sweep (fig7's variants)
    sweep = tmp_path / "sweep"
    size = ["model.width=1", "model.depth=10"] if cfg.model.name == "wrn" else ["model.width=8", "model.depth=3"]
    rows_by = cfg.exp.rows_by  # param.name, or model.norm for the Transformer figures
    one_row = ["param=sp"] if rows_by == "param.name" else []  # one parameterisation: two rows would double the cost
    args = [f"+exp={name}", *data, *size, "train.steps=12", "train.chunk_steps=6", *one_row,
            "train.eval_batch=100", f"hydra.sweep.dir={sweep}", *(["schedule.warmup_steps=1,4"] if by_warmup else [])]
    result = subprocess.run([sys.executable, "-m", "warmup.train", *args], cwd=tmp_path, capture_output=True,
                            text=True, env=CLI_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    params = ["sp"] if one_row else sorted(str(cfg.hydra.sweeper.params.get(rows_by.removesuffix(".name"),
                                                                            OmegaConf.select(cfg, rows_by)))
                                           .split(","))
    expected = ([f"{p}_T{t}" for p in params for t in (1, 4)] if by_warmup
                else sorted(str(cfg.hydra.sweeper.params[cfg.exp.color_by]).split(",")))
    curves = 2 if by_warmup else len(expected)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == expected
    assert (sweep / f"{name}.png").stat().st_size > 10_000 and not (tmp_path / "figures").exists()  # beside it
    fig, rendered = plots.experiment_figure(sweep)
    if "FCN-$" in OmegaConf.to_container(cfg.exp)["title"]:  # titled with what ran, not the unshrunk setting
        assert "FCN-3-8" in fig.get_suptitle() and "64 Fashion-MNIST" in fig.get_suptitle()
    panels = [plots.PANELS[p] for p in cfg.exp.panels]
    assert rendered == name and len(fig.axes) == len(panels) * len(params)
    assert [ax.get_ylabel() for ax in fig.axes] == [p.label for p in panels] * len(params)
    assert {ax.get_title() for ax in fig.axes} == {plots._label(p) for p in params}
    for ax, panel in zip(fig.axes, panels * len(params)):  # one curve per colour, each with its thresholds
        assert len(ax.lines) >= curves * (1 + len(panel.thresholds)), (panel.column, len(ax.lines))


@pytest.mark.parametrize("name", [n if n == "fig3_cpu" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in PHASE_CPU_EXPERIMENTS])
def test_shrunken_phase_diagram_runs_end_to_end_and_renders(name, data_root, text_root, tmp_path):
    cfg = compose_config([f"+exp={name}"], with_hydra=True)
    x_key = {"lr_trgt_scale": "schedule.lr_trgt_scale"}.get(cfg.exp.x, cfg.exp.x)
    sweep = tmp_path / "sweep"
    data = (tiny_lm_data(text_root) if cfg.model.name == "transformer" else
            [f"data.root={data_root}", "data.num_examples=64", "data.batch_size=16", "data.measure_examples=32",
             *(["data=fashion_mnist"] if cfg.data.name == "digits" else [])])  # digits: tests/test_data.py
    size = ["model.width=1", "model.depth=10"] if cfg.model.name == "wrn" else ["model.width=8", "model.depth=2"]
    args = [f"+exp={name}", *data, *size, "train.steps=12", "train.chunk_steps=6",
            "train.eval_every=6", "train.eval_batch=100", f"hydra.sweep.dir={sweep}", "schedule.warmup_steps=1,4",
            "param=sp",  # one parameterisation: fig3's SP/μP panels would double the cost
            f"{x_key}=0.01,1000" if x_key == "schedule.lr_trgt" else f"{x_key}=1,1000"]
    result = subprocess.run([sys.executable, "-m", "warmup.train", *args], cwd=tmp_path, capture_output=True,
                            text=True, env=CLI_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    panels = [k for k in (cfg.exp.rows_by, cfg.exp.cols_by) if k]
    pinned = {"param", "steps", "width"}  # one parameterisation, train.steps=12 and the model's size above
    sizes = [1 if k in pinned else len(str(cfg.hydra.sweeper.params[k]).split(",")) for k in panels]
    assert len(list(sweep.rglob("summary.json"))) == 4 * int(np.prod(sizes))
    assert (sweep / f"{name}.png").stat().st_size > 10_000
    fig, rendered = plots.experiment_figure(sweep)
    heatmaps = [ax for ax in fig.axes if ax.images]
    values = 1 if isinstance(cfg.exp.value, str) else len(cfg.exp.value)
    assert rendered == name and len(heatmaps) == int(np.prod(sizes)) * values
    planned = all(v in plots.PLANNED for v in ([cfg.exp.value] if isinstance(cfg.exp.value, str) else cfg.exp.value))
    for ax in heatmaps:  # the huge η_trgt diverges (empty) or fails (F); either way a boundary is drawn before it
        grid = ax.images[0].get_array()
        assert grid.shape == (2, 2) and not grid.mask[:, 0].any()
        marks = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
        hatched = {(round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in ax.patches if p.get_hatch()}
        if planned:  # values fixed before training (η_c savings) are printed in (hatched) diverged cells, or read n/a
            assert all(not grid.mask[a, 1] or (a, 1) in hatched or marks.get((a, 1)) in ("n/a", "F") for a in range(2))
        else:
            assert all((a, 1) in hatched or marks.get((a, 1)) == "F" for a in range(2))
        assert any(line.get_color() in ("red", "black") for line in ax.lines)

    # a relaunch that only relabels the figure trains nothing and renders the new description
    before = {p: p.stat().st_mtime_ns for p in sweep.rglob("metrics.csv")}
    png = (sweep / f"{name}.png").read_bytes()
    result = subprocess.run([sys.executable, "-m", "warmup.train", *args, "exp.title=Relabelled"], cwd=tmp_path,
                            capture_output=True, text=True, env=CLI_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("already finished") == len(before)
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("metrics.csv")} == before
    assert (sweep / f"{name}.png").read_bytes() != png  # rendering is deterministic: the title changed
    assert plots.experiment_figure(sweep, {**cfg.exp, "title": "Relabelled"})[0].get_suptitle() == "Relabelled"
    assert plots.experiment_figure(sweep, changes={"title": "Three seeds"})[0].get_suptitle() == "Three seeds"
    assert fig.get_suptitle() != "Relabelled"


def test_phase_diagram_marks_statuses_draws_boundaries_and_shares_the_colour_scale():
    rows = []
    for param, shift in (("sp", 0), ("mup", 1)):
        for t in (1, 16, 256):
            for i, c in enumerate((1, 2, 4, 8)):
                # divergence starts one column later with each longer warmup, and one column later in μP
                first_diverged = 2 + shift + (t > 1) + (t > 16)
                status = "diverged" if i >= first_diverged else ("failed" if i == first_diverged - 1 else "converged")
                rows.append(dict(param=param, warmup_steps=t, lr_trgt_scale=c, seed=0, status=status,
                                 best_test_acc=0.1 if status == "failed" else 0.5 + 0.1 * i + 0.05 * shift))
    table = pd.DataFrame(rows)
    fig = plots.phase_diagram(table, value="best_test_acc", x="lr_trgt_scale", cols_by="param")
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in heatmaps] == ["μP", "SP"]
    for ax in heatmaps:  # one colour scale for both panels
        assert ax.images[0].get_clim() == pytest.approx((0.1, 0.85))
    sp = heatmaps[1]
    grid = sp.images[0].get_array()
    np.testing.assert_array_equal(grid.mask, [[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])  # rows: T_wrm 1, 16, 256
    assert [t.get_text() for t in sp.texts].count("F") == 3
    red = next(line for line in sp.lines if line.get_color() == "red")
    assert list(red.get_xdata()) == [1.5, 1.5, 2.5, 2.5, 3.5, 3.5]  # left edges of the first diverged cells


def test_phase_diagram_marks_planned_values_a_run_does_not_have():
    """T_reach/T_wrm is printed in diverged cells (it is fixed before training), which stay uncoloured; a cell whose
    η_c check rejected the catapult has no T_reach at all and says n/a instead of looking like an ordinary diverged
    cell."""
    table = pd.DataFrame([dict(warmup_steps=16, lr_trgt_scale=c, status=status, t_reach_fraction=value)
                          for c, status, value in ((1, "converged", 0.0), (2, "diverged", 0.5), (4, "diverged", np.nan))])
    ax = next(ax for ax in plots.phase_diagram(table, value="t_reach_fraction").axes if ax.images)
    assert list(ax.images[0].get_array().mask[0]) == [False, True, True]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "0.5", "n/a"]


def test_trajectory_legend_names_diverged_and_failed_runs_and_marks_divergence():
    def run(t, status, loss):
        metrics = pd.DataFrame(dict(step=np.arange(len(loss)), train_loss=loss))
        return plots.Run(None, {"schedule": {"warmup_steps": t}, "param": {"name": "sp"}}, {"status": status}, metrics)
    runs = [run(1, "diverged", [1.0, 10.0, 1e4]), run(64, "failed", [1.0, 2.3, 2.3]), run(256, "converged", [1.0, 0.5, 0.1])]
    fig = plots.trajectory_figure(runs, [plots.PANELS["loss"]], rows_by="param.name", color_by="schedule.warmup_steps")
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]
    assert labels == [r"$T_{\rm wrm}$ = 1 (diverged)", r"$T_{\rm wrm}$ = 64 (failed)", r"$T_{\rm wrm}$ = 256"]
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_ydata()) == [1e4]
    # seeds share their colour and one legend entry, which counts the seeds that diverged or failed
    seeds = runs + [run(1, "converged", [1.0, 0.6, 0.2]), run(64, "failed", [1.0, 2.3, 2.3])]
    ax = plots.trajectory_figure(seeds, [plots.PANELS["loss"]], rows_by="param.name",
                                 color_by="schedule.warmup_steps").axes[0]
    labels = [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]
    assert labels == [r"$T_{\rm wrm}$ = 1 (1/2 diverged)", r"$T_{\rm wrm}$ = 64 (2/2 failed)", r"$T_{\rm wrm}$ = 256"]


def write_record(run_dir, config, metrics, status="converged"):
    """A run record as training leaves it: config.yaml, metrics.csv, summary.json."""
    records.write_config(run_dir, config)
    records.write_metrics(run_dir, metrics)
    records.write_summary(run_dir, {"status": status})


def warmup_metrics(lr_trgt, warmup_steps, sharpness, steps=64, every=1):
    """Linear warmup to `lr_trgt` with λᴴ constant at `sharpness`, measured every `every` steps; 2/η_t logged every
    step."""
    t = np.arange(steps)
    lr = lr_trgt * np.minimum(1, (t + 1) / warmup_steps)
    return pd.DataFrame(dict(step=t, lr=lr, train_loss=1 / (t + 1), sharpness=np.where(t % every, np.nan, sharpness),
                             sharpness_threshold=2 / lr))


TRAJECTORY = {"name": "traj", "panels": ["loss", "sharpness"], "rows_by": "param.name",
              "color_by": "schedule.warmup_steps"}


def test_trajectory_rows_have_their_own_y_range_with_the_late_threshold_inside(tmp_path):
    """SP's λᴴ ≈ 1 under 2/η_trgt = 200, μP's ≈ 10⁻³ under 0.02: each row's range holds its own curves and late
    thresholds, not the other row's; the early threshold (2/η_0 = 16× the late one) is cut off."""
    late = {"sp": 200, "mup": 0.02}
    for param, sharpness in (("sp", 1.0), ("mup", 1e-3)):
        write_record(tmp_path / param, {"param": {"name": param}, "schedule": {"warmup_steps": 16}, "exp": TRAJECTORY},
                     warmup_metrics(2 / late[param], 16, sharpness))
    fig, _ = plots.experiment_figure(tmp_path)
    mup, sp = fig.axes[1], fig.axes[3]  # rows sorted by name: μP (mup), then SP
    assert (mup.get_title(), sp.get_title()) == ("μP", "SP")
    assert not mup.get_shared_y_axes().joined(mup, sp)
    for ax, param, sharpness in ((mup, "mup", 1e-3), (sp, "sp", 1.0)):
        low, high = ax.get_ylim()
        assert low < sharpness < late[param] < high < 16 * late[param]
    assert mup.get_ylim()[1] < 1.0  # SP's λᴴ is not in μP's range


def test_trajectory_rows_by_several_keys_give_a_row_per_combination(tmp_path):
    exp = {**TRAJECTORY, "rows_by": ["param.name", "loss.name"], "color_by": "data.num_examples"}
    for param in ("sp", "mup"):
        for loss in ("mse", "xent"):
            for n in (800, 5000):
                write_record(tmp_path / f"{param}_{loss}_{n}", {"param": {"name": param}, "loss": {"name": loss},
                                                                "data": {"num_examples": n}, "exp": exp},
                             warmup_metrics(0.01, 1, 1.0))
    fig, _ = plots.experiment_figure(tmp_path)
    assert [ax.get_title() for ax in fig.axes[::2]] == ["μP · MSE", "μP · cross-entropy", "SP · MSE",
                                                        "SP · cross-entropy"]
    assert all(len([line for line in ax.lines if not line.get_label().startswith("_")]) == 2 for ax in fig.axes[::2])


@pytest.mark.parametrize("every, samples", [(8, 8), (64, 1)])  # 64 of 64 steps: λ₀ᴴ alone, which a line would hide
def test_a_quantity_measured_every_k_steps_is_drawn_with_dots(every, samples, tmp_path):
    write_record(tmp_path / "run", {"param": {"name": "sp"}, "schedule": {"warmup_steps": 16}, "exp": TRAJECTORY},
                 warmup_metrics(0.01, 16, 1.0, every=every))
    loss, sharpness = plots.experiment_figure(tmp_path)[0].axes
    assert loss.lines[0].get_marker() == "None" and sharpness.lines[0].get_marker() == "."
    assert len(sharpness.lines[0].get_xdata()) == samples
    low, high = sharpness.get_ylim()
    assert low < 1.0 < high


def test_the_persistent_catapult_is_drawn_on_top_thick_in_its_own_colour_and_named(tmp_path):
    exp = {**TRAJECTORY, "panels": ["lr", "loss"], "color_by": "exp.variant", "color_label": "warmup"}
    for variant, init, warmup in (("linear64", "linear", 64), ("linear256", "linear", 256), ("persistent", "persistent", 1)):
        write_record(tmp_path / variant, {"param": {"name": "sp"}, "schedule": {"init": init, "warmup_steps": warmup},
                                          "exp": {**exp, "variant": variant}}, warmup_metrics(0.01, warmup, 1.0))
    ax = plots.experiment_figure(tmp_path)[0].axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    persistent = lines.pop("warmup = persistent")
    assert set(lines) == {"warmup = linear64", "warmup = linear256"}
    assert persistent.get_zorder() > max(line.get_zorder() for line in lines.values())
    assert persistent.get_linewidth() > max(line.get_linewidth() for line in lines.values())
    assert to_hex(persistent.get_color()) not in {to_hex(line.get_color()) for line in lines.values()}
    assert "warmup = persistent" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_phase_diagram_prints_failed_values_and_hatches_diverged_cells_uncoloured():
    """A failed cell prints its accuracy over F; a diverged cell is hatched and never coloured, in the savings
    diagrams too, where its T_reach and T_save (fixed before training) are still printed."""
    table = pd.DataFrame([dict(warmup_steps=16, lr_trgt_scale=c, status=status, best_test_acc=acc,
                               t_reach_fraction=0.5 * i, t_save_fraction=0.25 * i)
                          for i, (c, status, acc) in enumerate(((1, "converged", 0.8), (2, "failed", 0.1),
                                                                 (4, "diverged", np.nan)))])
    accuracy = next(ax for ax in plots.phase_diagram(table).axes if ax.images)
    savings = [ax for ax in plots.phase_diagram(table, value=["t_reach_fraction", "t_save_fraction"]).axes if ax.images]
    for ax, texts in ((accuracy, ["80", "10", "F"]), (savings[0], ["0", "0.5", "F", "1"]),
                      (savings[1], ["0", "0.25", "F", "0.5"])):
        assert list(ax.images[0].get_array().mask[0]) == [False, False, True]
        assert [(round(p.get_x() + 0.5), p.get_hatch()) for p in ax.patches] == [(2, "///")]
        assert [t.get_text() for t in ax.texts] == texts
    value, mark = accuracy.texts[1:]  # the failed cell: its value above its F
    loss = next(ax for ax in plots.phase_diagram(table.assign(final_test_loss=[4.966, 5.0, np.nan]),
                                                 value="final_test_loss").axes if ax.images)
    assert [t.get_text() for t in loss.texts] == ["4.97", "5", "F"]  # losses keep three digits
    assert value.get_position()[0] == mark.get_position()[0] == 1 and value.get_position()[1] > mark.get_position()[1]


def test_a_cell_of_several_seeds_prints_the_fraction_that_diverged_or_failed():
    """Three seeds per cell: the cell takes the most common status (a tie goes to the worse outcome), is coloured by
    its trained seeds' mean and prints how many of its seeds diverged (D) or failed (F)."""
    outcomes = {1: [("converged", 0.8), ("converged", 0.7), ("converged", 0.9)],
                2: [("converged", 0.6), ("failed", 0.1), ("diverged", np.nan)],  # a three-way tie: diverged
                4: [("converged", 0.5), ("diverged", np.nan), ("diverged", np.nan)]}
    table = pd.DataFrame([dict(warmup_steps=16, lr_trgt_scale=c, seed=seed, status=status, best_test_acc=acc)
                          for c, runs in outcomes.items() for seed, (status, acc) in enumerate(runs)])
    cells = plots.cell_table(table, "best_test_acc", "lr_trgt_scale", "warmup_steps", [])
    assert list(cells.status) == ["converged", "diverged", "diverged"] and list(cells.runs) == [3, 3, 3]
    assert cells.value[0] == pytest.approx(0.8) and cells.value[2] == pytest.approx(0.5)
    ax = next(ax for ax in plots.phase_diagram(table).axes if ax.images)
    assert list(ax.images[0].get_array().mask[0]) == [False, True, True]
    assert [t.get_text() for t in ax.texts] == ["80", "D 1/3\nF 1/3", "D 2/3"]
    assert sorted(round(p.get_x() + 0.5) for p in ax.patches) == [1, 2]  # mostly diverged: hatched


def test_panels_of_momentum_decay_steps_width_and_norm_are_titled_with_their_setting():
    table = pd.DataFrame([{"optimizer.momentum": m, "schedule.decay": d, "warmup_steps": 1, "lr_trgt_scale": 1,
                           "status": "converged", "best_test_acc": 0.8} for m in (0.0, 0.9) for d in (False, True)])
    fig = plots.phase_diagram(table, rows_by="optimizer.momentum", cols_by="schedule.decay")
    assert [ax.get_title() for ax in fig.axes if ax.images] == [
        "momentum β = 0 · no decay", "momentum β = 0 · cosine decay",
        "momentum β = 0.9 · no decay", "momentum β = 0.9 · cosine decay"]
    table = pd.DataFrame([{"steps": steps, "warmup_steps": 1, "lr_trgt_scale": 1, "status": "converged",
                           "best_test_acc": 0.8} for steps in (400, 1600)])
    assert [ax.get_title() for ax in plots.phase_diagram(table, cols_by="steps").axes if ax.images] == [
        "T = 400 steps", "T = 1600 steps"]  # by size, not as text
    assert [ax.get_title() for ax in plots.phase_diagram(table.rename(columns={"steps": "width"}), cols_by="width").axes
            if ax.images] == ["n = 400", "n = 1600"]
    table = table.rename(columns={"steps": "model.norm"}).assign(**{"model.norm": ["pre", "pre_no_final"]})
    assert [ax.get_title() for ax in plots.phase_diagram(table, cols_by="model.norm").axes if ax.images] == [
        "Pre-LN", "Pre-LN, no final LN"]


def test_tick_labels_name_powers_of_two_on_their_decade():
    assert plots._tick_labels([0.00016 * 2 ** i for i in range(3)]) == [
        r"$2^{4}\cdot10^{-5}$", r"$2^{5}\cdot10^{-5}$", r"$2^{6}\cdot10^{-5}$"]
    assert plots._tick_labels([0.5, 1, 2, 512]) == ["$2^{-1}$", "$2^{0}$", "$2^{1}$", "$2^{9}$"]
    assert plots._tick_labels([0.0001, 0.000141, 0.0002]) == ["0.0001", "0.000141", "0.0002"]


def test_a_three_panel_phase_diagram_of_ten_by_four_cells_is_legible_at_page_width():
    """Fig. 22's layout: 3 optimisers × 10 η_trgt = 2ˣ·10⁻⁵ × 4 T_wrm, failed and diverged cells included."""
    lrs = [0.00032 * 2 ** i for i in range(10)]
    table = pd.DataFrame([dict(optimizer=opt, warmup_steps=t, lr_trgt=lr, status="failed" if i == 8 else
                               "diverged" if i == 9 else "converged", final_test_acc=0.5 + 0.03 * i)
                          for opt in ("adam", "gi_adam", "radam") for t in (1, 256, 1024, 4096) for i, lr in enumerate(lrs)])
    fig = plots.phase_diagram(table, value="final_test_acc", x="lr_trgt", cols_by="optimizer")
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == 3 and 4 <= fig.get_figwidth() / 3 <= 5.5
    fig.canvas.draw()
    for ax in heatmaps:
        assert ax.get_xticklabels()[0].get_text() == r"$2^{5}\cdot10^{-5}$"
        assert min(t.get_fontsize() for t in ax.texts) >= 7 and len(ax.texts) == 4 * 9 + 4  # values, 4 F
        boxes = [label.get_window_extent() for label in ax.get_xticklabels()] + [t.get_window_extent() for t in ax.texts]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_long_titles_break_after_commas_to_fit_the_figure():
    title = "Fig. 10 (CPU scale: FCN-4-128, 800 Fashion-MNIST images, SGD B = 512 with momentum β = 0.9, MSE, λᴴ on 800 examples)"
    fig = plt.figure(figsize=(8.4, 4))
    plots._suptitle(fig, title)
    lines = fig.get_suptitle().split("\n")
    assert len(lines) == 2 and ", ".join(line.removesuffix(",") for line in lines) == title
    fig.canvas.draw()
    assert fig._suptitle.get_window_extent().width < fig.bbox.width


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n.endswith("_cpu")])
def test_cpu_titles_name_the_data_model_and_batch_that_ran(name):
    cfg = compose_config([f"+exp={name}"], with_hydra=True)
    title, data, model = cfg.exp.title, cfg.data, cfg.model
    swept = cfg.hydra.sweeper.params or {}
    axes = {cfg.exp.get(k) for k in ("color_by", "rows_by", "cols_by", "x", "y")}
    # a swept key the figure plots (by its config key or its collected column) is a trend; one it does not, a pin
    trend = lambda key: key in swept and bool({key, key.rsplit(".", 1)[-1]} & axes)
    # a trend over the width names it n (a WRN's widening factor k), over the data N
    width = ("k" if model.name == "wrn" else "n") if trend("model.width") else model.width
    examples = "N" if trend("data.num_examples") else data.get("num_examples")
    assert title.startswith("Fig. ") and "CPU scale" in title
    assert {"fcn": f"FCN-{model.depth}-{width}", "wrn": f"WRN-{model.depth}-{width}",
            "transformer": f"LM-{model.depth}-{width}"}[model.name] in title
    assert {"fashion_mnist": f"{examples} Fashion-MNIST images", "digits": f"{examples} 8×8 digits"}.get(
        data.name, "pydoc corpus") in title
    batch = " / ".join(str(swept["data.batch_size"]).split(",")) if "data.batch_size" in swept else data.batch_size
    assert f"B = {batch}" in title if batch else ("GD" in title or "full batch" in title)  # a batch trend lists its Bs
    assert all(int(n) == data.measure_examples for n in re.findall(r"(\d+) examples", title))


def test_render_figure_script_pools_records_under_a_new_name(tmp_path, monkeypatch):
    """scripts/render_figure.py, as the notes use it for seed figures: records of two launches in one directory, the
    figure renamed by --set, written into --figure-dir only."""
    import runpy

    for seed in (1, 2):
        write_record(tmp_path / "pooled" / f"sp_T16_s{seed}", {"param": {"name": "sp"}, "seed": seed,
                                                              "schedule": {"warmup_steps": 16}, "exp": TRAJECTORY},
                     warmup_metrics(0.01, 16, 1.0))
    script = pathlib.Path(__file__).parents[1] / "scripts" / "render_figure.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "pooled"), "--figure-dir", str(tmp_path / "figs"),
                                      "--set", "name=traj_seeds", "--title", "Pooled seeds"])
    runpy.run_path(str(script), run_name="__main__")
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["traj_seeds.png"]
    assert not list((tmp_path / "pooled").glob("*.png"))
