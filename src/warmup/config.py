"""A run's config: every check before any data is read or any step is taken, and the one list of keys that do not
change a run's numbers. Each check fails with a `ConfigError` whose message is one line naming the key, its value
and what is allowed; nothing here reads data files.
"""
import difflib
import functools
import hashlib
import math
import pathlib

from omegaconf import DictConfig, OmegaConf

from warmup.curvature import DTYPES as SHARPNESS_DTYPES, METHODS as SHARPNESS_METHODS
from warmup.text import CORPORA as TEXT_CORPORA

CONFIG_DIR = pathlib.Path(__file__).parent / "configs"
GROUPS = ("model", "param", "optimizer", "loss", "data", "schedule", "sharpness", "logger")  # packaged as their own node
SCHEDULE_INITS = ("linear", "catapult", "persistent")
# Training examples in each image dataset's published files (a `data.root` may hold fewer: checked on load).
PUBLISHED_TRAIN_SIZE = {"fashion_mnist": 60000, "mnist": 60000, "cifar10": 50000, "cifar100": 50000,
                        "tiny_imagenet": 100000, "digits": 1500}

# Keys (or key prefixes, ending in '.') that do not change a run's numbers: how it is chunked and shown, and the
# figure's description (`exp.`, whose numbers reach the run through the keys it sets). A relaunch compares every
# other key with the finished record; a batch may differ in these; tables leave them out; cell names omit them.
NOT_A_RESULT = (
    "train.progress", "train.tensorboard", "train.chunk_steps", "train.scan_unroll", "train.checkpoint_every", "exp.",
    "logger.")
# Overrides left out of a sweep cell's directory name: the above, where the data lies (checked on relaunch, see
# `records.finished_summary`) and how the cell is launched, so a relaunch with another launcher finds its records.
CELL_NAME_EXCLUDES = (*[k for k in NOT_A_RESULT if not k.endswith(".")], "data.root", "launcher",
                      "hydra.launcher.n_jobs", "hydra.launcher.max_cells", "hydra.launcher.cell_axis",
                      "logger", *(f"logger.{k}" for k in ("project", "entity", "mode", "group")))
LOGGERS, WANDB_MODES = ("none", "wandb"), ("offline", "online", "disabled")
MAX_CELL_NAME = 200  # bytes; longer override lists are shortened with a hash (file systems allow 255)


class ConfigError(ValueError):
    """A bad configuration value: its message is the one line the user sees."""


def is_result_key(key: str) -> bool:
    return not key.startswith(NOT_A_RESULT)


def cell_name(override_dirname: str) -> str:
    """A sweep cell's directory name: Hydra's `override_dirname`, or its head and a hash when too long for a path."""
    if len(override_dirname.encode()) <= MAX_CELL_NAME:
        return override_dirname
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:12]
    return override_dirname.encode()[:MAX_CELL_NAME - 13].decode(errors="ignore") + "_" + digest


OmegaConf.register_new_resolver("gpu_share", lambda n: f"{0.9 / int(n):.3f}", replace=True)  # launcher=parallel
OmegaConf.register_new_resolver("cell_name", cell_name, replace=True)
OmegaConf.register_new_resolver("cell_name_excludes", lambda: list(CELL_NAME_EXCLUDES), replace=True)


def flat(config: dict, prefix: str = "") -> dict:
    """A resolved config (plain nested dicts) as {dotted key: leaf}; lists and empty dicts are leaves."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_global(path: pathlib.Path) -> bool:
    return path.read_text().lstrip().startswith("# @package _global_")


@functools.cache
def known_keys() -> frozenset[str]:
    """Every key a run's config may hold: train.yaml's own and those of each group's options (exp.* is free)."""
    top = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "train.yaml"))
    keys = {k for k in flat(top) if not k.startswith(("defaults", "hydra."))}
    for group in GROUPS:
        for path in (CONFIG_DIR / group).glob("*.yaml"):
            if not _is_global(path):
                option = OmegaConf.to_container(OmegaConf.load(path))
                keys |= {f"{group}.{k}" for k in flat(option) if not k.startswith("defaults")}
    return frozenset(keys)


def check_key(key: str) -> None:
    """ConfigError for a key no config defines, with the closest known keys and the keys of its node."""
    if key.startswith(("exp.", "hydra.")) or key == "exp" or key in known_keys():
        return
    close = difflib.get_close_matches(key, known_keys(), n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    node, _, _ = key.rpartition(".")
    siblings = sorted(k[len(node) + 1:] for k in known_keys() if node and k.startswith(node + "."))
    allowed = f"{node} keys: {', '.join(siblings)}" if siblings else \
        f"top-level keys: {', '.join(sorted({k.split('.')[0] for k in known_keys()}))}"
    raise ConfigError(f"{key}: unknown key; {hint}{allowed}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _number(cfg: DictConfig, key: str, low: float, *, above: bool = False, high: float = math.inf) -> None:
    """`key` holds a finite number >= `low` (> `low` when `above`) and <= `high`."""
    value = OmegaConf.select(cfg, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value > low if above else value >= low) and value <= high
    bound = f"> {low:g}" if above else f">= {low:g}"
    _require(ok, f"{key}={value}: must be a finite number {bound}" + (f" and <= {high:g}" if high < math.inf else ""))


def _integer(cfg: DictConfig, key: str, minimum: int, meaning: str = "", *, nullable: bool = False) -> None:
    """`key` holds an integer >= `minimum` (or null when `nullable`); `meaning` follows the message."""
    value = OmegaConf.select(cfg, key)
    ok = (nullable and value is None) or (isinstance(value, int) and not isinstance(value, bool) and value >= minimum)
    _require(ok, f"{key}={value}: must be an integer >= {minimum}{' or null' if nullable else ''}{meaning}")


def _choice(cfg: DictConfig, key: str, allowed) -> None:
    value = OmegaConf.select(cfg, key)
    _require(value in allowed, f"{key}={value}: unknown; allowed: {', '.join(map(str, allowed))}")


def _boolean(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    _require(isinstance(value, bool), f"{key}={value}: must be true or false")


def validate(cfg: DictConfig) -> None:
    """Reject a bad config before any data is read or any step is taken; each message names the key."""
    for key in flat(OmegaConf.to_container(cfg, resolve=False)):
        check_key(key)
    _validate_schedule(cfg)
    _validate_training(cfg)
    _validate_data(cfg)
    _validate_sharpness(cfg)


def _validate_schedule(cfg: DictConfig) -> None:
    s = cfg.schedule
    given = [k for k in ("lr_trgt", "lr_trgt_scale") if s[k] is not None]
    _require(len(given) == 1, "schedule.lr_trgt / schedule.lr_trgt_scale: give exactly one "
             f"(got {'both' if given else 'neither'}): lr_trgt is absolute η_trgt > 0, lr_trgt_scale is c > 0 in "
             "η_trgt = c/λ₀ᴴ")
    for key in given:
        _number(cfg, f"schedule.{key}", 0, above=True)
    _number(cfg, "schedule.lr_init", 0)
    _integer(cfg, "schedule.warmup_steps", 1, " (1 = no warmup)")
    _number(cfg, "schedule.exponent", 0, above=True)
    _number(cfg, "schedule.decay_power", 0)
    _number(cfg, "schedule.lr_min_ratio", 0, high=1)
    _boolean(cfg, "schedule.decay")
    _choice(cfg, "schedule.init", SCHEDULE_INITS)
    _number(cfg, "schedule.search_delta", 0, above=True)
    if cfg.schedule.search_lr_start is not None:  # null: η_trgt/T_wrm
        _number(cfg, "schedule.search_lr_start", 0, above=True)
    _integer(cfg, "schedule.search_max_forward_passes", 2)
    _integer(cfg, "schedule.search_check_steps", 0, " (0 = no check)")


def _validate_training(cfg: DictConfig) -> None:
    for key in ("train.steps", "train.eval_batch", "train.chunk_steps", "train.scan_unroll", "model.width"):
        _integer(cfg, key, 1)
    _integer(cfg, "train.eval_every", 0, " (0 = only at the end)")
    _integer(cfg, "train.checkpoint_every", 0, " (0 = only on SIGTERM)")
    _require(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool), f"seed={cfg.seed}: must be an integer")
    for key in ("param.full_mup", "train.progress", "train.tensorboard"):
        _boolean(cfg, key)
    _number(cfg, "train.divergence_factor", 1, above=True)
    _choice(cfg, "train.skip_above", (None, "diverged", "failed"))
    _choice(cfg, "logger.name", LOGGERS)
    if cfg.logger.name == "wandb":
        _choice(cfg, "logger.mode", WANDB_MODES)


def _validate_data(cfg: DictConfig) -> None:
    d = cfg.data
    _integer(cfg, "data.batch_size", 1, " (null = full batch)", nullable=True)
    _integer(cfg, "data.measure_examples", 1)
    if d.name in TEXT_CORPORA:
        _require(cfg.model.name == "transformer",
                 f"data={d.name}: a text corpus needs model=transformer (got model={cfg.model.name})")
        _integer(cfg, "data.context", 1)
        _require(isinstance(d.vocab_size, int) and 2 <= d.vocab_size <= 1 << 16,
                 f"data.vocab_size={d.vocab_size}: must be an integer in [2, 65536]")
        return
    _require(cfg.model.name != "transformer",
             f"model=transformer: needs a text corpus, data={'|'.join(TEXT_CORPORA)} (got data={d.name})")
    _integer(cfg, "data.num_examples", 1, " (null = all)", nullable=True)
    published = PUBLISHED_TRAIN_SIZE.get(d.name)
    if published is not None and d.num_examples is not None:
        _require(d.num_examples <= published, f"data.num_examples={d.num_examples}: must be <= {published}, the "
                 f"training examples of {d.name} (or null = all)")
    if d.batch_size is not None:
        most = d.num_examples if d.num_examples is not None else published
        _require(most is None or d.batch_size <= most, f"data.batch_size={d.batch_size}: must be <= "
                 f"data.num_examples={most} (or null = full batch)")
    _integer(cfg, "data.augment.crop", 0, " pixels")
    _boolean(cfg, "data.augment.flip")
    _number(cfg, "data.augment.mixup_alpha", 0)


def _validate_sharpness(cfg: DictConfig) -> None:
    _choice(cfg, "sharpness.method", SHARPNESS_METHODS)
    _integer(cfg, "sharpness.every", 0, " (0 = off)")
    for key in ("sharpness.max_iters", "sharpness.init_max_iters"):
        _integer(cfg, key, 1)
    for key in ("sharpness.tol", "sharpness.init_tol"):
        _number(cfg, key, 0)
    _choice(cfg, "sharpness.dtype", SHARPNESS_DTYPES)
