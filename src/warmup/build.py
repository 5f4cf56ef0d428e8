"""Config → plain objects: the last place a config is read.

`spec(cfg)` takes the numbers the run lifecycle needs (`RunSpec`, cheap: no data); `build(cfg)` puts the data on the
device and builds the model, its initial parameters, the optimiser as the loop needs it, the batch-drawing function
and the loop's static choices (`Built`). Everything below (`run`, `catapult`, `loop`, `sweep`) takes these.
"""
import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from warmup import curvature, data, loop, losses, models, optim, text
from warmup.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Search:
    """The η_c searches (paper Alg. 1–3): δ, the first η, the forward-pass budget, the catapult check's steps."""
    delta: float
    lr_start: float | None  # None: η_trgt/T_wrm (`first_lr`)
    max_forward_passes: int
    check_steps: int

    def first_lr(self, lr_trgt: float, warmup_steps: int) -> float:
        """η₀ of the exponential search: `lr_start`, or η_trgt/T_wrm — the first warmup step, the paper's choice
        for comparing with a linear warmup; never above η_trgt."""
        return min(self.lr_start if self.lr_start is not None else lr_trgt / warmup_steps, lr_trgt)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What the run lifecycle needs of a config, as plain values."""
    config: dict  # the resolved config: written as config.yaml, matched on relaunch
    steps: int
    lr_trgt: float | None  # absolute η_trgt, or
    lr_trgt_scale: float | None  # c, η_trgt = c/λ₀ᴴ
    warmup_steps: int
    lr_init: float
    exponent: float
    decay: dict  # decay_power (0 = none), total_steps, lr_min_ratio: `schedules.schedule_params`
    init: str  # linear | catapult | persistent
    search: Search
    eigen: dict  # the λ₀ᴴ solve: method, max_iters, tol, dtype
    divergence_factor: float
    eval_batch: int
    progress: bool
    tensorboard: bool  # write TensorBoard event files beside the records
    logger: dict  # the logger group (name: none | wandb, and its settings): `events.writers`
    checkpoint_every: int  # a mid-run checkpoint after the chunk crossing each multiple of it (0 = only on SIGTERM)
    skip_above: tuple[str, ...]  # statuses of a smaller η_trgt that skip this cell (train.skip_above); () = never
    perplexity: bool  # a language model with cross-entropy reports its test perplexity


def spec(cfg: DictConfig) -> RunSpec:
    s, t, h = cfg.schedule, cfg.train, cfg.sharpness
    return RunSpec(
        config=OmegaConf.to_container(cfg, resolve=True), steps=t.steps, lr_trgt=s.lr_trgt,
        lr_trgt_scale=s.lr_trgt_scale, warmup_steps=s.warmup_steps, lr_init=s.lr_init, exponent=s.exponent,
        decay=dict(decay_power=s.decay_power if s.decay else 0.0, total_steps=t.steps, lr_min_ratio=s.lr_min_ratio),
        init=s.init, search=Search(s.search_delta, s.search_lr_start, s.search_max_forward_passes,
                                   s.search_check_steps),
        eigen=dict(method=h.method, max_iters=h.init_max_iters, tol=h.init_tol, dtype=h.dtype),
        divergence_factor=t.divergence_factor, eval_batch=t.eval_batch, progress=t.progress,
        tensorboard=t.tensorboard, logger=OmegaConf.to_container(cfg.logger, resolve=True),
        checkpoint_every=t.checkpoint_every,
        skip_above={None: (), "diverged": ("diverged",), "failed": ("failed", "diverged")}[t.skip_above],
        perplexity=cfg.data.name in text.CORPORA and cfg.loss.name == "xent")


class Built(NamedTuple):
    """Plain objects built from a config: everything a run needs to train."""
    arrays: loop.Arrays
    train_eval: tuple[np.ndarray, np.ndarray]  # the training set as evaluation examples (x, y), on the host
    chance_acc: float  # accuracy of the best input-blind guess (`run.status`)
    model: Any
    params: Any
    optimizer: loop.Optimizer
    draw: Callable  # the loop's batch: `((batch_key, augment_key), arrays) -> (x, y)`
    loss_fn: Callable
    lr_multipliers: Any  # full-μP per-layer Adam rates, or None
    loop_cfg: loop.LoopConfig
    key: jax.Array

    @property
    def tx(self):
        return self.optimizer.tx

    def measurement_loss(self) -> Callable:
        """`params -> L(params)` on the measurement batch (the training set for full-batch runs)."""
        return loop.measurement_loss(self.model.apply, self.loss_fn, self.arrays)

    def chunk_fn(self, axis_name: str | None = None, **loop_changes) -> Callable:
        """The compiled loop chunk of this run (`loop.make_chunk_fn`), with `loop_changes` to its `LoopConfig`."""
        return loop.make_chunk_fn(dataclasses.replace(self.loop_cfg, **loop_changes), self.model.apply, self.loss_fn,
                                  self.optimizer, self.draw, axis_name)

    def evaluate_fn(self, eval_batch: int) -> Callable:
        """jitted `(params, x, y, w) -> (mean loss, accuracy)` over a padded set; build once, reuse across runs."""
        return jax.jit(lambda p, x, y, w: loop.evaluate(self.model.apply, self.loss_fn, p, x, y, w, eval_batch))


class _Data(NamedTuple):
    arrays: loop.Arrays
    train_eval: tuple[np.ndarray, np.ndarray]
    num_classes: int
    chance_acc: float


def _image_data(cfg: DictConfig) -> _Data:
    """The seeded training subset, its measurement batch and the padded test set, one-hot targets."""
    d = cfg.data
    folder = data.find_root(d.name, d.root)
    dataset = data.load(d.name, str(folder))
    n = len(dataset.x_train)
    if d.num_examples is not None and d.num_examples > n:
        raise ConfigError(f"data.num_examples={d.num_examples}: must be <= the {n} training examples in {folder}")
    x_train, y_train = data.subset(dataset.x_train, dataset.y_train, d.num_examples, cfg.seed)
    if d.batch_size is not None and d.batch_size > len(x_train):
        raise ConfigError(f"data.batch_size={d.batch_size}: must be <= the {len(x_train)} training examples "
                          "(or null)")
    k = dataset.num_classes
    y_train = data.one_hot(y_train, k)
    x_measure, y_measure = (x_train, y_train) if d.batch_size is None else (
        x_train[:d.measure_examples], y_train[:d.measure_examples])
    x_test, y_test, w_test = loop.pad_for_eval(dataset.x_test, data.one_hot(dataset.y_test, k), cfg.train.eval_batch)
    arrays = loop.Arrays(*(jnp.asarray(a) for a in (x_train, y_train, x_measure, y_measure, x_test, y_test, w_test)))
    return _Data(arrays, (x_train, y_train), k, 1 / k)


def _text_data(cfg: DictConfig) -> _Data:
    """A language model's data: the training stream (minibatches are random windows drawn on the device) or, for
    full batch, all its non-overlapping windows; `measure_examples` fixed random windows for λᴴ (the full batch
    when full batch); the test split in non-overlapping windows. Integer next-token targets."""
    d = cfg.data
    streams = text.load(d.name, d.root, d.vocab_size)
    train_windows = text.windows(streams.train, d.context)
    if d.batch_size is None:
        x_train, y_train = x_measure, y_measure = train_windows
    else:
        x_train, y_train = streams.train[:-1], streams.train[1:]
        x_measure, y_measure = text.sample_windows(streams.train, d.context, d.measure_examples, cfg.seed)
    x_test, y_test, w_test = loop.pad_for_eval(*text.windows(streams.test, d.context), cfg.train.eval_batch)
    arrays = loop.Arrays(*(jnp.asarray(a) for a in (x_train, y_train, x_measure, y_measure, x_test, y_test, w_test)))
    return _Data(arrays, train_windows, streams.vocab_size,
                 text.most_frequent_share(streams.train, streams.vocab_size))


def _draw_fn(cfg: DictConfig) -> Callable:
    """The step's batch: random text windows, or a minibatch (None: the full batch) and its augmentation."""
    d = cfg.data
    batch_size = d.batch_size
    if d.name in text.CORPORA and batch_size is not None:
        context = d.context
        return lambda keys, a: text.draw_windows(keys[0], a.x_train, a.y_train, batch_size, context)
    if d.name in text.CORPORA:  # full batch: all windows
        return lambda keys, a: data.draw_batch(keys[0], a.x_train, a.y_train, None)
    augment = dict(flip=d.augment.flip, crop=d.augment.crop, mixup_alpha=d.augment.mixup_alpha)

    def draw(keys, a):
        x, y = data.draw_batch(keys[0], a.x_train, a.y_train, batch_size)
        return data.augment(keys[1], x, y, **augment)

    return draw


def _optimizer(cfg: DictConfig, multipliers) -> loop.Optimizer:
    """The transform, its stability thresholds and, for the Adam family, the preconditioner of λ^{P⁻¹H}: P after the
    update (count = t+1, ν = v_{t+1}), divided by the full-μP per-layer rates where they apply."""
    o = cfg.optimizer
    hyper = dict(momentum=o.momentum) if o.name == "sgd" else dict(b1=o.b1, b2=o.b2, eps=o.eps)
    tx = optim.build_optimizer(o.name, seed=cfg.seed, lr_multipliers=multipliers, **hyper)
    thresholds = lambda lr: curvature.thresholds(lr, optimizer=o.name, **(
        dict(momentum=o.momentum) if o.name == "sgd" else dict(b1=o.b1)))
    if o.name == "sgd":
        return loop.Optimizer(tx, thresholds)
    b1, b2, eps = o.b1, o.b2, o.eps

    def preconditioner(opt_state, dtype):
        moments = optim.adam_moments(opt_state)
        precond = curvature.adam_preconditioner(moments.count, curvature.cast(moments.nu, dtype), b1=b1, b2=b2,
                                                eps=eps)
        return precond if multipliers is None else jax.tree.map(jnp.divide, precond, multipliers)

    return loop.Optimizer(tx, thresholds, preconditioner)


def _loop_cfg(cfg: DictConfig) -> loop.LoopConfig:
    d, h = cfg.data, cfg.sharpness
    augmented = d.name not in text.CORPORA and (d.augment.flip or d.augment.crop > 0 or d.augment.mixup_alpha > 0)
    return loop.LoopConfig(
        measures_train_batch=d.batch_size is None and not augmented, sharpness_every=h.every,
        sharpness_method=h.method, sharpness_max_iters=h.max_iters, sharpness_tol=h.tol, sharpness_dtype=h.dtype,
        eval_every=cfg.train.eval_every, eval_batch=cfg.train.eval_batch,
        chunk_steps=min(cfg.train.chunk_steps, cfg.train.steps), scan_unroll=cfg.train.scan_unroll)


def build(cfg: DictConfig) -> Built:
    """Data on the device, the model and its initial parameters, the optimiser, the loop's static choices. The
    library's own checks (optimiser hyperparameters, model depth, …) are ConfigErrors."""
    try:
        return _build(cfg)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _build(cfg: DictConfig) -> Built:
    language = cfg.data.name in text.CORPORA
    d = _text_data(cfg) if language else _image_data(cfg)
    options = {key: value for key, value in cfg.model.items() if key not in ("name", "width", "depth")}
    model = models.build_model(cfg.model.name, param=cfg.param.name, num_classes=d.num_classes,
                               width=cfg.model.width, depth=cfg.model.depth, **options)
    init_key, loop_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params = jax.jit(model.init)(init_key, d.arrays.x_measure[:1])["params"]
    full_mup = cfg.optimizer.name != "sgd" and cfg.param.name == "mup" and cfg.param.full_mup  # Adam only
    multipliers = models.adam_lr_multipliers(params, "mup", full_mup=True) if full_mup else None
    return Built(d.arrays, d.train_eval, d.chance_acc, model, params, _optimizer(cfg, multipliers),
                 _draw_fn(cfg), losses.get(cfg.loss.name), multipliers, _loop_cfg(cfg), loop_key)

