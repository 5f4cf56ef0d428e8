import os
import pathlib
import subprocess
import sys

import pytest

from warmup import plots, train

EXPERIMENTS = sorted(p.stem for p in (train.CONFIG_DIR / "exp").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    from conftest import compose_config
    cfg = compose_config([f"+exp={name}"])
    train.validate(cfg)
    assert set(cfg.exp.panels) <= set(plots.PANELS)
    assert cfg.exp.name == name


CPU_EXPERIMENTS = [name for name in EXPERIMENTS if name.endswith("_cpu")]
FAST = {"fig1_cpu", "fig2_cpu", "fig9_cpu"}  # one of each panel family (GD, Adam, momentum); the rest are slow


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in CPU_EXPERIMENTS])
def test_shrunken_experiment_runs_end_to_end_and_renders(name, data_root, tmp_path):
    from conftest import compose_config
    cfg = compose_config([f"+exp={name}"], with_hydra=True)
    minibatch = ["data.batch_size=16", "data.measure_examples=32"] if cfg.data.batch_size else []
    sweep = tmp_path / "sweep"
    args = [f"+exp={name}", f"data.root={data_root}", "model.width=8", "model.depth=3", "data.num_examples=64",
            "train.steps=12", "train.chunk_steps=6", "train.eval_batch=100", f"hydra.sweep.dir={sweep}",
            "schedule.warmup_steps=1,4", *minibatch]
    result = subprocess.run([sys.executable, "-m", "warmup.train", *args], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "WARMUP_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    params = sorted(str(cfg.hydra.sweeper.params.param).split(","))
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [f"{p}_T{t}" for p in params for t in (1, 4)]
    assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 10_000
    fig, rendered = plots.experiment_figure(sweep)
    panels = [plots.PANELS[p] for p in cfg.exp.panels]
    assert rendered == name and len(fig.axes) == len(panels) * len(params)
    assert [ax.get_ylabel() for ax in fig.axes] == [p.label for p in panels] * len(params)
    assert {ax.get_title() for ax in fig.axes} == {plots._label(p) for p in params}
    for ax, panel in zip(fig.axes, panels * len(params)):  # two T_wrm curves, each with its thresholds
        assert len(ax.lines) >= 2 * (1 + len(panel.thresholds)), (panel.column, len(ax.lines))
