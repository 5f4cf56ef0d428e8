"""Figures from run records alone (config.yaml, metrics.csv, summary.json): no training needed to restyle them."""
import pathlib
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from warmup import records  # noqa: E402


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


def _label(value) -> str:
    return {"sp": "SP", "mup": "μP"}.get(value, str(value))


def trajectory_figure(runs: list[Run], panels: list[Panel], *, rows_by: str, color_by: str, title: str = "",
                      color_label: str = r"$T_{\rm wrm}$"):
    """Rows: one per value of `rows_by` (e.g. param.name); columns: panels; one colour per value of `color_by`,
    the same colour in every panel and row. Thresholds dashed in the run's colour; diverged runs end with ×."""
    row_values = sorted({lookup(r.config, rows_by) for r in runs}, key=str)
    color_values = sorted({lookup(r.config, color_by) for r in runs})
    colors = dict(zip(color_values, plt.cm.viridis(np.linspace(0, 0.9, len(color_values)))))
    fig, axes = plt.subplots(len(row_values), len(panels), figsize=(4.2 * len(panels), 3.2 * len(row_values)),
                             squeeze=False, constrained_layout=True)
    for i, row in enumerate(row_values):
        for run in sorted((r for r in runs if lookup(r.config, rows_by) == row), key=lambda r: lookup(r.config, color_by)):
            value = lookup(run.config, color_by)
            m = run.metrics
            for ax, panel in zip(axes[i], panels):
                series = m[["step", panel.column]].dropna()
                step = series.step + 1  # log-x axes start at the first update
                ax.plot(step, series[panel.column], color=colors[value], lw=1.2,
                        label=f"{color_label} = {value}" + (" (diverged)" if run.summary.get("status") == "diverged" else ""))
                if run.summary.get("status") == "diverged" and len(series):
                    ax.plot(step.iloc[-1], series[panel.column].iloc[-1], "x", color=colors[value], ms=8)
                for (column, scale), style in zip(panel.thresholds, ("--", ":")):
                    thr = m[["step", column]].dropna()
                    ax.plot(thr.step + 1, scale * thr[column], style, color=colors[value], lw=0.9, alpha=0.8)
        for j, (ax, panel) in enumerate(zip(axes[i], panels)):
            ax.set_xscale("log")
            if panel.log:
                ax.set_yscale("log")
            ax.set_xlabel("step $t$")
            ax.set_ylabel(panel.label)
            ax.set_title(f"{_label(row)}", fontsize=10)
            _clip_thresholds(ax, runs, panel)
        axes[i][0].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    return fig


def _clip_thresholds(ax, runs: list[Run], panel: Panel) -> None:
    """Thresholds start huge (2/η_t with η_0 ≈ 0): keep the y-range on the measured curves."""
    values = pd.concat([r.metrics[panel.column] for r in runs]).to_numpy(dtype=float)
    values = values[np.isfinite(values) & (values > 0 if panel.log else True)]
    if len(values):
        low, high = values.min(), values.max()
        ax.set_ylim(low / 2 if panel.log else low - 0.05 * abs(high - low),
                    high * 3 if panel.log else high + 0.05 * abs(high - low))


def save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def experiment_figure(sweep_dir):
    """The figure an experiment's runs ask for (their config's `exp` node), and the experiment's name."""
    runs = load_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"{sweep_dir}: no run records (config.yaml + metrics.csv) below it")
    exp = runs[0].config["exp"]
    fig = trajectory_figure(runs, [PANELS[name] for name in exp["panels"]], rows_by=exp["rows_by"],
                            color_by=exp["color_by"], title=exp.get("title", ""))
    return fig, exp["name"]


def render_experiment(sweep_dir, figure_dir="figures") -> pathlib.Path:
    """Render an experiment's figure into `figure_dir/<exp.name>.png`."""
    fig, name = experiment_figure(sweep_dir)
    path = save(fig, pathlib.Path(figure_dir) / f"{name}.png")
    print(f"figure: {path}")
    return path


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency; plots stay importable without it
    Callback = object


class RenderFigure(Callback):
    """Hydra callback: when an `+exp=figN` sweep ends, render its figure from the records it wrote."""

    def __init__(self, figure_dir: str = "figures"):
        self.figure_dir = figure_dir

    def on_multirun_end(self, config, **kwargs) -> None:
        render_experiment(config.hydra.sweep.dir, self.figure_dir)
