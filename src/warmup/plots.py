"""Figures from run records alone (config.yaml, metrics.csv, summary.json): no training needed to restyle them.

Two kinds, chosen by an experiment's `exp.kind`: `trajectory` (metrics against the step, one colour per T_wrm) and
`phase` (heatmaps of a summary field over the (η_trgt, T_wrm) grid, from `collect.collect`'s table).
"""
import pathlib
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from warmup import collect, records  # noqa: E402


class Run(NamedTuple):
    path: pathlib.Path
    config: dict
    summary: dict
    metrics: pd.DataFrame


class Panel(NamedTuple):
    """One column of a trajectory figure: `column` against the step, and thresholds drawn in the run's colour,
    each a (metrics column, scale) pair — dashed, then dotted."""
    column: str
    label: str
    thresholds: tuple[tuple[str, float], ...] = ()
    log: bool = True


PANELS = {
    "loss": Panel("train_loss", "training loss"),
    "sharpness": Panel("sharpness", r"sharpness $\lambda^H_t$  (dashed: $2/\eta_t$)", (("sharpness_threshold", 1.0),)),
    # SGD with momentum β = 0.9 logs (2+2β)/η; 2/η (its value at initialisation) is that times 1/(1+β).
    "momentum_sharpness": Panel("sharpness", r"$\lambda^H_t$  (dashed: $(2+2\beta)/\eta_t$, dotted: $2/\eta_t$)",
                                (("sharpness_threshold", 1.0), ("sharpness_threshold", 1 / 1.9))),
    "pre_sharpness": Panel("pre_sharpness", r"$\lambda^{P^{-1}H}_t$  (dashed: $38/\eta_t$)",
                           (("pre_sharpness_threshold", 1.0),)),
    "adam_sharpness": Panel("sharpness", r"$\lambda^H_t$  (dashed: $3.8/\eta_t$)", (("sharpness_threshold", 1.0),)),
    "lr": Panel("lr", r"learning rate $\eta_t$"),
}


def lookup(config: dict, dotted: str):
    """config['a']['b'] for 'a.b'."""
    for key in dotted.split("."):
        config = config[key]
    return config


def load_run(path) -> Run | None:
    """A run directory's record; None when it has no metrics yet."""
    path = pathlib.Path(path)
    if not (path / "metrics.csv").exists():
        return None
    config = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))
    return Run(path, config, records.read_summary(path) or {}, records.read_metrics(path))


def load_runs(sweep_dir) -> list[Run]:
    """Every run record below `sweep_dir`."""
    found = (load_run(p.parent) for p in sorted(pathlib.Path(sweep_dir).rglob("summary.json")))
    return [run for run in found if run is not None]


LABELS = {"sp": "SP", "mup": "μP", "sgd": "SGD", "adam": "Adam", "gi_adam": "GI-Adam", "ri_adam": "RI-Adam",
          "radam": "RAdam", "mse": "MSE", "xent": "cross-entropy",
          "pre": "Pre-LN", "pre_no_final": "Pre-LN, no final LN", "post": "Post-LN"}


KEY_LABELS = {"optimizer.momentum": lambda v: f"momentum β = {v:g}", "steps": lambda v: f"T = {v} steps",
              "width": lambda v: f"n = {v}",
              "schedule.decay": lambda v: "cosine decay" if v else "no decay"}  # panels of a value that needs its key


def _label(value, key: str | None = None) -> str:
    if key in KEY_LABELS:
        return KEY_LABELS[key](value)
    return LABELS.get(value, str(value)) if isinstance(value, str) else str(value)


def _ordered(values) -> list:
    """Panel values in order: numbers by size (T = 400 before 1600), anything else by its text."""
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _persistent(run: Run) -> bool:
    return run.config.get("schedule", {}).get("init") == "persistent"


def _colors(runs: list[Run], color_by: str) -> dict:
    """One viridis colour per value of `color_by`, the same in every panel and row; Fig. 7's persistent-catapult
    schedule in red instead, so it stands out among the linear warmups."""
    plain = sorted({lookup(r.config, color_by) for r in runs if not _persistent(r)})
    colors = dict(zip(plain, plt.cm.viridis(np.linspace(0, 0.9, len(plain)))))
    return {**colors, **{lookup(r.config, color_by): "crimson" for r in runs if _persistent(r)}}


def _sampled(steps: pd.Series, logged: pd.Series) -> bool:
    """A column measured every k > 1 logged steps (λᴴ with sharpness.every = k): drawn with dots as well, so that
    the line reads as joining samples; so is a column measured once (λ₀ᴴ alone), which a line would not show."""
    return len(steps) == 1 or (len(steps) > 1 and np.median(np.diff(steps)) > np.median(np.diff(logged)))


def _draw_run(axes, panels: list[Panel], run: Run, color, label: str) -> None:
    """One run in every panel of its row: the curve (thick and on top for a persistent catapult), its thresholds
    dashed then dotted in the same colour, and × at the last point of a diverged run."""
    m = run.metrics
    width = dict(lw=2.4, zorder=3) if _persistent(run) else dict(lw=1.2)
    for ax, panel in zip(axes, panels):
        series = m[["step", panel.column]].dropna()
        step = series.step + 1  # log-x axes start at the first update
        dots = dict(marker=".", ms=3) if _sampled(series.step, m.step) else {}
        ax.plot(step, series[panel.column], color=color, label=label, **width, **dots)
        if run.summary.get("status") == "diverged" and len(series):
            ax.plot(step.iloc[-1], series[panel.column].iloc[-1], "x", color=color, ms=8)
        for (column, scale), style in zip(panel.thresholds, ("--", ":")):
            thr = m[["step", column]].dropna()
            ax.plot(thr.step + 1, scale * thr[column], style, color=color, lw=0.9, alpha=0.8)


def trajectory_figure(runs: list[Run], panels: list[Panel], *, rows_by: str | list[str], color_by: str,
                      title: str = "", color_label: str = r"$T_{\rm wrm}$"):
    """Rows: one per value of `rows_by` (e.g. param.name), or per combination of a list of keys; columns: panels;
    one colour per value of `color_by` (its seeds share it). Every panel has its own y-range, set by its row's runs
    alone (SP's and μP's λᴴ differ by orders of magnitude); the legend names diverged and failed runs, with the count
    of seeds that did."""
    row_keys = [rows_by] if isinstance(rows_by, str) else list(rows_by)

    def row_of(run: Run) -> tuple:
        return tuple(lookup(run.config, key) for key in row_keys)

    row_values = _ordered({row_of(r) for r in runs})
    colors = _colors(runs, color_by)
    fig, axes = plt.subplots(len(row_values), len(panels), figsize=(4.2 * len(panels), 3.2 * len(row_values)),
                             squeeze=False, constrained_layout=True)
    for i, row in enumerate(row_values):
        row_runs = sorted((r for r in runs if row_of(r) == row), key=lambda r: lookup(r.config, color_by))
        labelled = set()
        for run in row_runs:
            value = lookup(run.config, color_by)
            label = f"_{value}" if value in labelled else _legend_label(
                color_label, value, [r.summary.get("status") for r in row_runs if lookup(r.config, color_by) == value])
            labelled.add(value)
            _draw_run(axes[i], panels, run, colors[value], label)
        for ax, panel in zip(axes[i], panels):
            ax.set_xscale("log")
            if panel.log:
                ax.set_yscale("log")
            ax.set_xlabel("step $t$")
            ax.set_ylabel(panel.label)
            ax.set_title(" · ".join(_label(value, key) for key, value in zip(row_keys, row)), fontsize=10)
            _set_ylim(ax, row_runs, panel)
        axes[i][0].legend(fontsize=8, loc="best")
    _suptitle(fig, title)
    return fig


def _legend_label(color_label: str, value, statuses: list) -> str:
    """One legend entry per colour: "T_wrm = 1 (diverged)" for one run; with several seeds, how many diverged or
    failed ("T_wrm = 1 (2/3 diverged)")."""
    bad = [f"{statuses.count(s)}/{len(statuses)} {s}" if len(statuses) > 1 else s
           for s in ("diverged", "failed") if s in statuses]
    return f"{color_label} = {value}" + (f" ({', '.join(bad)})" if bad else "")


def _set_ylim(ax, runs: list[Run], panel: Panel) -> None:
    """The y-range of one row's panel: its runs' measured curves and each threshold's late value (at the run's last
    step: 2/η_trgt, …). The early thresholds, huge while η_t ≈ 0 in the warmup, may be cut off."""
    late = [scale * r.metrics[column].dropna().iloc[-1:] for r in runs for column, scale in panel.thresholds]
    values = pd.concat([r.metrics[panel.column] for r in runs] + late).to_numpy(dtype=float)
    values = values[np.isfinite(values) & (values > 0 if panel.log else True)]
    if len(values):
        low, high = values.min(), values.max()
        ax.set_ylim(low / 2 if panel.log else low - 0.05 * abs(high - low),
                    high * 3 if panel.log else high + 0.05 * abs(high - low))


def _suptitle(fig, title: str) -> None:
    """Title the figure on as many lines as it needs, broken after commas so that none runs past the figure's
    width (about 10 characters per inch at a title's 12 pt): titles list the data, model and batch that ran."""
    lines = []
    for part in title.split(", "):
        if lines and len(lines[-1]) + len(part) + 2 <= 10 * fig.get_figwidth():
            lines[-1] += ", " + part
        else:
            lines.append(part)
    if title:
        fig.suptitle(",\n".join(lines))


def save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# ---- phase diagrams -----------------------------------------------------------------------------------------------
VALUE_LABELS = {"best_test_acc": "best test accuracy", "final_test_acc": "final test accuracy",
                "final_test_loss": "final test loss", "final_train_loss": "final training loss",
                "t_reach": r"$T_{\rm reach}$", "t_save": r"$T_{\rm save}$",
                "t_reach_fraction": r"$T_{\rm reach}/T_{\rm wrm}$", "t_save_fraction": r"$T_{\rm save}/T_{\rm wrm}$"}
AXIS_LABELS = {"lr_trgt_scale": r"$\eta_{\rm trgt}\,\lambda^H_0$", "schedule.lr_trgt": r"$\eta_{\rm trgt}$",
               "lr_trgt": r"$\eta_{\rm trgt}$", "warmup_steps": r"$T_{\rm wrm}$"}
LOWER_IS_BETTER = ("loss",)  # value names containing these get a reversed colour map
# Fixed before training (the η_c search's schedule): printed for every cell, diverged ones included.
PLANNED = ("eta_c", "t_reach", "t_save", "t_reach_fraction", "t_save_fraction")
TRAINED = ("converged", "failed")  # the statuses of runs that trained to the end: only their cells are coloured
MARKS = {"failed": "F", "error": "!", "skipped": "–", "": "·"}


def _tick_labels(values) -> list[str]:
    """2^x·10^k when every value is a power of two times one decade (c = 2ˣ; Adam's η_trgt = 2ˣ·10⁻⁵), else 3
    significant digits."""
    values = np.asarray(values, dtype=float)
    if len(values) > 1 and (values > 0).all():
        for k in range(0, -9, -1):
            exponents = np.log2(values / 10.0 ** k)
            if np.allclose(exponents, np.round(exponents), rtol=0, atol=1e-6):
                decade = rf"\cdot10^{{{k}}}" if k else ""
                return [rf"$2^{{{round(e)}}}{decade}$" for e in exponents]
    return [f"{v:.3g}" for v in values]


def cell_table(table: pd.DataFrame, value: str, x: str, y: str, by: list[str], planned: bool = False) -> pd.DataFrame:
    """One row per (panel, x, y) cell: `value` averaged over the cell's runs that trained to the end (seeds; every
    run when `planned`), the cell's status (its runs' most common one; a tie goes to the worse outcome), how many
    runs it holds and how many of them diverged or failed."""
    keys = [*by, x, y]
    rows = []
    for key, runs in table.groupby(keys, dropna=False, sort=True):
        counts = runs.status.value_counts()
        status = max(counts.index, key=lambda s: (counts[s], s in ("diverged", "failed"), s == "diverged"))
        values = pd.to_numeric(runs[value], errors="coerce") if value in runs else pd.Series(dtype=float)
        usable = values if planned else values[runs.status.isin(TRAINED)]
        rows.append({**dict(zip(keys, key)), "status": status, "value": usable.mean(), "runs": len(runs),
                     "diverged": int(counts.get("diverged", 0)), "failed": int(counts.get("failed", 0))})
    return pd.DataFrame(rows, columns=[*keys, "status", "value", "runs", "diverged", "failed"])


def seed_outcomes(cell) -> str:
    """A cell of several seeds: the fraction that diverged (D) and failed (F), e.g. "D 1/3" ('' for one run or none);
    both on two lines, which fit a narrow cell."""
    if cell.runs < 2:
        return ""
    return "\n".join(f"{mark} {k}/{cell.runs}" for mark, k in (("D", cell.diverged), ("F", cell.failed)) if k)


def _panel_grids(panel: pd.DataFrame, x: str, y: str, xs: list, ys: list):
    """A panel's cells as (T_wrm, η) arrays of values, of statuses ('' where a cell has no runs) and of seed
    outcomes (`seed_outcomes`)."""
    grid = np.full((len(ys), len(xs)), np.nan)
    status = np.full((len(ys), len(xs)), "", dtype=object)
    outcomes = np.full((len(ys), len(xs)), "", dtype=object)
    for _, c in panel.iterrows():
        a, b = ys.index(c[y]), xs.index(c[x])
        status[a, b], grid[a, b], outcomes[a, b] = c.status, c.value, seed_outcomes(c)
    return grid, status, outcomes


def _annotate(ax, grid: np.ndarray, status: np.ndarray, outcomes: np.ndarray, number, dark, planned: bool) -> None:
    """Each cell's text: its value (where `number` formats one), above its mark: the fraction of seeds that diverged
    or failed when it has several, else `MARKS` (n/a for a `PLANNED` value the run does not have); cells whose
    runs mostly diverged hatched."""
    for (a, b), s in np.ndenumerate(status):
        v = grid[a, b]
        if s == "diverged":
            ax.add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.75", lw=0))
        color = ("white" if dark(v) else "black") if s in TRAINED and np.isfinite(v) else ("black" if s else "grey")
        mark = outcomes[a, b] or MARKS.get(s, "n/a" if planned and not np.isfinite(v) else None)
        shown = number and np.isfinite(v) and (s in TRAINED or planned)  # a mostly diverged cell: its seeds only
        lines = [t for t in (number(v) if shown else None, mark) if t]
        for text, shift in zip(lines, (0.18, -0.18) if len(lines) == 2 else (0,)):
            ax.text(b, a + shift, text, ha="center", va="center", fontsize=7, color=color)


def _first_index(flags: np.ndarray) -> float:
    hits = np.flatnonzero(flags)
    return float(hits[0]) if len(hits) else np.nan


def _draw_boundaries(ax, status: np.ndarray) -> None:
    """The divergence boundary (solid red) and the failure boundary (dashed black) of a (T_wrm, η) status grid: the
    left edge of the first flagged cell in each row."""
    ys, xs = status.shape
    for flags, style in ((status == "diverged", dict(color="red", lw=2)),
                         (np.isin(status, ("diverged", "failed")), dict(color="black", lw=1.2, ls="--"))):
        edge = np.array([_first_index(r) for r in flags]) - 0.5
        if np.isfinite(edge).any():
            steps_x = np.repeat(np.where(np.isfinite(edge), edge, xs - 0.5), 2)
            steps_y = np.repeat(np.arange(ys) - 0.5, 2) + np.tile([0, 1], ys)
            ax.plot(steps_x, steps_y, **style)


def phase_diagram(table: pd.DataFrame, *, value: str | list[str] = "best_test_acc", x: str = "lr_trgt_scale",
                  y: str = "warmup_steps", rows_by: str | None = None, cols_by: str | None = None, title: str = ""):
    """Heatmaps of `value` over (x = η_trgt or c, y = T_wrm), one panel per (rows_by, cols_by) value, all on one
    colour scale. Only cells whose runs trained to the end are coloured. Diverged cells are hatched, and print their
    value only if it is `PLANNED` before training; failed cells print their value over F; errors are !, skipped
    cells – (train.skip_above), cells without runs ·, and a `PLANNED` value a run does not have (no usable η_c: no
    catapult, or training at it diverged) n/a. The divergence boundary (left edge of the first diverged cell in each
    T_wrm row) is drawn solid red, the failure boundary (first failed or diverged cell) dashed black. A list of
    values (e.g. T_reach and T_save fractions) gives one column of panels per value instead of `cols_by`. A cell of
    several seeds (`seed=0,1,2`) takes its runs' most common status, its trained runs' mean, and prints the fraction
    that diverged (D k/n) or failed (F k/n). Sized for a page: 4.5 in per panel, 7 pt cell text."""
    values = [value] if isinstance(value, str) else list(value)
    planned = all(v in PLANNED for v in values)  # shown for diverged cells too
    if not isinstance(value, str):
        table = pd.concat([table.assign(quantity=VALUE_LABELS.get(v, v), _value=table[v]) for v in value])
        value, cols_by = "_value", "quantity"
    by = [k for k in (rows_by, cols_by) if k]
    cells = cell_table(table, value, x, y, by, planned)
    xs, ys = sorted(cells[x].dropna().unique()), sorted(cells[y].dropna().unique())
    row_values = _ordered(cells[rows_by].unique()) if rows_by else [None]
    col_values = _ordered(cells[cols_by].unique()) if cols_by else [None]
    coloured = cells.value[cells.status.isin(TRAINED) & np.isfinite(cells.value.astype(float))]
    vmin, vmax = (coloured.min(), coloured.max()) if len(coloured) else (0, 1)
    reverse = any(w in value for w in LOWER_IS_BETTER)
    cmap = plt.get_cmap("viridis_r" if reverse else "viridis").with_extremes(bad="white")
    dark = lambda v: ((v - vmin) / ((vmax - vmin) or 1) < 0.5) != reverse  # the cell's colour is in viridis' dark half
    digits = 3 if "loss" in value else 2  # LM test losses differ in the second decimal (5.07 vs 5.09)
    number = None if len(xs) > 16 else (lambda v: f"{100 * v:.0f}") if "acc" in value else (lambda v: f"{v:.{digits}g}")
    fig, axes = plt.subplots(len(row_values), len(col_values), squeeze=False, constrained_layout=True,
                             figsize=(4.5 * len(col_values) + 1.2, (0.4 * len(ys) + 1.6) * len(row_values) + 0.4))
    for i, row in enumerate(row_values):
        for j, col in enumerate(col_values):
            ax = axes[i][j]
            mask = np.ones(len(cells), bool)
            for key, v in ((rows_by, row), (cols_by, col)):
                if key:
                    mask &= (cells[key] == v).to_numpy()
            grid, status, outcomes = _panel_grids(cells[mask], x, y, xs, ys)
            shown = np.ma.masked_where(~np.isin(status, TRAINED) | ~np.isfinite(grid), grid)
            image = ax.imshow(shown, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
            _annotate(ax, grid, status, outcomes, number, dark, planned)
            _draw_boundaries(ax, status)
            ax.set_xticks(range(len(xs)), _tick_labels(xs), fontsize=7, rotation=90)  # upright ones overlap
            ax.set_yticks(range(len(ys)), [f"{int(v)}" if float(v).is_integer() else f"{v:g}" for v in ys], fontsize=7)
            ax.set_xlabel(AXIS_LABELS.get(x, x))
            ax.set_ylabel(AXIS_LABELS.get(y, y))
            ax.set_title(" · ".join(_label(v, k) for k, v in ((rows_by, row), (cols_by, col)) if v is not None),
                         fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.8, label=VALUE_LABELS.get(value, "" if value == "_value" else value))
    _suptitle(fig, title)
    return fig


def experiment_figure(sweep_dir, exp: dict | None = None, changes: dict | None = None):
    """The figure an experiment asks for, and its name: `exp` is the figure's description (an `exp` config node);
    by default the one its runs recorded (the first record's). `changes` replace some of its fields: the title (to
    say how many seeds a cell holds), the layout of records pooled from several experiments."""
    runs = load_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"{sweep_dir}: no run records (config.yaml + metrics.csv) below it")
    exp = {**(exp or runs[0].config["exp"]), **(changes or {})}
    if exp.get("kind", "trajectory") == "phase":
        fig = phase_diagram(collect.collect(sweep_dir), value=exp["value"], x=exp["x"], y=exp.get("y", "warmup_steps"),
                            rows_by=exp.get("rows_by"), cols_by=exp.get("cols_by"), title=exp.get("title", ""))
    else:
        fig = trajectory_figure(runs, [PANELS[name] for name in exp["panels"]], rows_by=exp["rows_by"],
                                color_by=exp["color_by"], title=exp.get("title", ""),
                                **({"color_label": exp["color_label"]} if "color_label" in exp else {}))
    return fig, exp["name"]


def render_experiment(sweep_dir, figure_dir="figures", exp: dict | None = None, changes: dict | None = None
                      ) -> pathlib.Path:
    """Render an experiment's figure into `figure_dir/<exp.name>.png` (`exp`, `changes` as in `experiment_figure`)."""
    fig, name = experiment_figure(sweep_dir, exp, changes)
    path = save(fig, pathlib.Path(figure_dir) / f"{name}.png")
    print(f"figure: {path}")
    return path


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency; plots stay importable without it
    Callback = object


class RenderFigure(Callback):
    """Hydra callback: when an `+exp=figN` sweep ends, render its figure from the records it wrote, as the launch's
    `exp` node describes it (a relaunch that only changes the figure's description re-renders without retraining),
    into `figure_dir` — by default beside the records, `<hydra.sweep.dir>/<exp.name>.png`. Titles interpolate the
    settings they quote (`${model.width}`, …), so a shrunk launch is titled with what ran."""

    def __init__(self, figure_dir: str | None = None):
        self.figure_dir = figure_dir

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = config.hydra.sweep.dir
        render_experiment(sweep_dir, self.figure_dir or sweep_dir, OmegaConf.to_container(config.exp, resolve=True))
