"""Every paper-scale experiment (`+exp=figN`, not `_cpu`) runs its first cell for 3 steps at the paper's model size,
on small files written here in the published formats (CIFAR-10 pickles, WikiText's raw layout): configs that have
never met a GPU are known to compose, build, compile and train. Slow: WRN-16-4 steps take seconds on a CPU; all 27
take about half an hour on 2 cores (fig16's λᴴ-every-step WRN-16-4 cell alone 4 min)."""
import pytest

from warmup import config, records
from warmup.run import execute
from conftest import compose_config, write_wikitext
from test_data import write_cifar

PAPER = sorted(p.stem for p in (config.CONFIG_DIR / "exp").glob("fig*.yaml") if p.stem[3:].isdigit())
SMOKE = ("train.steps=3", "train.eval_every=0", "train.progress=false", "train.tensorboard=false",
         "sharpness.init_max_iters=3", "data.measure_examples=64")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    write_cifar(root, "cifar10", n=64)  # 5 training batches of 64 images, 64 test images
    for folder in ("wikitext-2-raw", "wikitext-103-raw"):
        write_wikitext(root, folder, n_train=3000, n_eval=200)
    return root


def first_cell(name: str) -> list[str]:
    """The overrides of the experiment's first sweep cell (each swept key's first value)."""
    params = compose_config([f"+exp={name}"], with_hydra=True).hydra.sweeper.params or {}
    return [f"{key}={str(values).split(',')[0]}" for key, values in params.items()]


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_the_first_cell_of_every_paper_scale_experiment_trains_three_steps(name, published, tmp_path):
    overrides = [f"+exp={name}", *first_cell(name), f"data.root={published}", *SMOKE]
    paper = compose_config(overrides)
    if paper.data.name.startswith("wikitext"):
        overrides.append("data.batch_size=8")
    else:  # at most the 320 images written; the paper's B = 128 kept
        overrides += ["data.num_examples=256", *(["data.batch_size=128"] if paper.data.batch_size else [])]
    cfg = compose_config(overrides)
    summary = execute(cfg, tmp_path / "cell")
    assert summary["status"] in records.FINISHED and summary["status"] != "skipped", summary
    assert summary["steps_completed"] == 3 or summary["status"] == "diverged"
    assert cfg.model == paper.model  # the paper's model size
