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


def test_shrunken_fig1_runs_end_to_end_and_renders(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["+exp=fig1_cpu", f"data.root={data_root}", "model.width=8", "model.depth=3", "data.num_examples=64",
            "train.steps=12", "train.chunk_steps=6", "train.eval_batch=100", f"hydra.sweep.dir={sweep}",
            "schedule.warmup_steps=1,4"]
    result = subprocess.run([sys.executable, "-m", "warmup.train", *args], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "WARMUP_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["mup_T1", "mup_T4", "sp_T1", "sp_T4"]
    assert (tmp_path / "figures" / "fig1_cpu.png").stat().st_size > 10_000
    fig, name = plots.experiment_figure(sweep)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert len(fig.axes) == 4 and labels[0] == "training loss" and "sharpness" in labels[1]
    assert {ax.get_title() for ax in fig.axes} == {"SP", "μP"}
    assert len(fig.axes[1].lines) == 4  # two T_wrm curves + their dashed 2/η_t thresholds
