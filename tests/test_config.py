import re

import pytest
from omegaconf import OmegaConf

from warmup import config
from conftest import compose_config


def test_an_unknown_key_is_refused_with_the_closest_keys_and_its_node():
    cfg = compose_config(["schedule.lr_trgt=0.1", "+schedule.warmup_step=10"])
    with pytest.raises(config.ConfigError) as err:
        config.validate(cfg)
    message = str(err.value)
    assert message.startswith("schedule.warmup_step: unknown key; did you mean schedule.warmup_steps")
    assert "warmup_steps" in message.split("schedule keys:")[1] and "+" not in message


def test_every_shipped_key_and_the_figure_description_are_known():
    cfg = compose_config(["schedule.lr_trgt=0.1", "model=transformer", "data=pydoc", "+exp.anything=1"])
    config.validate(cfg)
    assert {"model.heads", "model.norm", "data.context", "optimizer.b2", "sharpness.init_tol"} <= config.known_keys()


@pytest.mark.parametrize("override, message", [
    ("schedule.lr_trgt=inf", "schedule.lr_trgt=inf: must be a finite number > 0"),
    ("schedule.lr_trgt=nan", "schedule.lr_trgt=nan: must be a finite number > 0"),
    ("schedule.lr_init=-inf", "schedule.lr_init=-inf: must be a finite number >= 0"),
    ("train.divergence_factor=inf", "train.divergence_factor=inf: must be a finite number > 1"),
    ("schedule.lr_min_ratio=2", "schedule.lr_min_ratio=2: must be a finite number >= 0 and <= 1"),
    ("data.num_examples=100000", "data.num_examples=100000: must be <= 60000, the training examples of fashion_mnist"),
    ("data.batch_size=70000", "data.batch_size=70000: must be <= data.num_examples=5000"),
])
def test_every_value_is_checked_without_reading_data(override, message):
    with pytest.raises(config.ConfigError, match="^" + re.escape(message)):
        config.validate(compose_config(["schedule.lr_trgt=0.1", override]))


def test_the_lr_scale_that_is_infinite_is_named_as_itself():
    with pytest.raises(config.ConfigError, match=r"^schedule\.lr_trgt_scale=inf: "):
        config.validate(compose_config(["schedule.lr_trgt_scale=inf"]))


def test_long_cell_names_are_shortened_with_a_hash_and_stay_distinct():
    short = "schedule.lr_trgt=0.1,seed=0"
    assert config.cell_name(short) == short
    long_a, long_b = ",".join(f"k{i}=v{i}" for i in range(60)), ",".join(f"k{i}=w{i}" for i in range(60))
    a, b = config.cell_name(long_a), config.cell_name(long_b)
    assert len(a.encode()) <= config.MAX_CELL_NAME and a != b and a.startswith("k0=v0,k1=v1")
    assert config.cell_name(long_a) == a  # the same overrides find the same directory again


def test_the_cell_name_leaves_out_exactly_the_keys_that_do_not_name_a_cell():
    hydra = compose_config(["schedule.lr_trgt=0.1"], with_hydra=True).hydra
    excluded = OmegaConf.to_container(hydra.job.config.override_dirname, resolve=True)["exclude_keys"]
    assert excluded == list(config.CELL_NAME_EXCLUDES)
    assert {"train.progress", "train.chunk_steps", "data.root", "launcher"} <= set(excluded)
    assert not config.is_result_key("train.chunk_steps") and not config.is_result_key("exp.title")
    assert config.is_result_key("data.root") and config.is_result_key("model.width")
