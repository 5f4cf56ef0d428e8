"""Hydra entry point: compose → validate → build → run → record.   python -m warmup.train [overrides]

The only module that reads the Hydra config; everything below it takes explicit arguments.
"""
import dataclasses
import logging
import math
import pathlib
import re
import sys
import time
from typing import Any, NamedTuple

import hydra
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from jax.flatten_util import ravel_pytree
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from warmup import catapult, curvature, data, loop, losses, models, optim, records, schedules, text

CONFIG_DIR = pathlib.Path(__file__).parent / "configs"
# launcher=parallel: each of n JAX processes may take this fraction of the GPU's memory
OmegaConf.register_new_resolver("gpu_share", lambda n: f"{0.9 / int(n):.3f}", replace=True)
SCHEDULE_INITS = ("linear", "catapult", "persistent")


class ConfigError(ValueError):
    """A bad configuration value: its message is the one line the user sees."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _require_integer(cfg: DictConfig, key: str, minimum: int, meaning: str = "") -> None:
    """`key` (dotted) holds an integer >= `minimum`; `meaning` follows the message, e.g. " (0 = off)"."""
    value = OmegaConf.select(cfg, key)
    _require(isinstance(value, int) and value >= minimum, f"{key}={value}: must be an integer >= {minimum}{meaning}")


def validate(cfg: DictConfig) -> None:
    """Reject bad values before any data is read or any step is taken; each message names the key."""
    s = cfg.schedule
    given = [k for k in ("lr_trgt", "lr_trgt_scale") if s[k] is not None]
    _require(len(given) == 1, "schedule.lr_trgt / schedule.lr_trgt_scale: give exactly one "
             f"(got {'both' if given else 'neither'}): lr_trgt is absolute η_trgt > 0, lr_trgt_scale is c > 0 in "
             "η_trgt = c/λ₀ᴴ")
    for key in given:
        _require(s[key] > 0, f"schedule.{key}={s[key]}: must be > 0")
    _require(s.lr_init >= 0, f"schedule.lr_init={s.lr_init}: must be >= 0")
    _require_integer(cfg, "schedule.warmup_steps", 1, " (1 = no warmup)")
    _require(s.exponent > 0, f"schedule.exponent={s.exponent}: must be > 0")
    _require(s.decay_power >= 0, f"schedule.decay_power={s.decay_power}: must be >= 0")
    _require(0 <= s.lr_min_ratio <= 1, f"schedule.lr_min_ratio={s.lr_min_ratio}: must be in [0, 1]")
    _require(s.init in SCHEDULE_INITS, f"schedule.init={s.init}: unknown; allowed: {', '.join(SCHEDULE_INITS)}")
    _require(s.search_delta > 0 and s.search_lr_start > 0 and s.search_max_forward_passes >= 2,
             "schedule.search_delta / search_lr_start: must be > 0, schedule.search_max_forward_passes: >= 2")
    _require_integer(cfg, "schedule.search_check_steps", 0, " (0 = no check)")
    t = cfg.train
    _require_integer(cfg, "train.steps", 1)
    _require_integer(cfg, "train.eval_batch", 1)
    _require(isinstance(cfg.seed, int), f"seed={cfg.seed}: must be an integer")
    _require_integer(cfg, "model.width", 1)
    for key in ("param.full_mup", "schedule.decay", "train.progress"):
        value = OmegaConf.select(cfg, key)
        _require(isinstance(value, bool), f"{key}={value}: must be true or false")
    _require_integer(cfg, "train.chunk_steps", 1)
    _require_integer(cfg, "train.scan_unroll", 1)
    _require_integer(cfg, "train.eval_every", 0, " (0 = only at the end)")
    _require(t.divergence_factor > 1, f"train.divergence_factor={t.divergence_factor}: must be > 1")
    _require(t.skip_above in (None, "diverged", "failed"),
             f"train.skip_above={t.skip_above}: unknown; allowed: null, diverged, failed")
    d = cfg.data
    _require(d.batch_size is None or (isinstance(d.batch_size, int) and d.batch_size >= 1),
             f"data.batch_size={d.batch_size}: must be an integer >= 1 or null (full batch)")
    _require(d.measure_examples >= 1, f"data.measure_examples={d.measure_examples}: must be >= 1")
    if d.name in text.CORPORA:
        _require(cfg.model.name == "transformer",
                 f"data={d.name}: a text corpus needs model=transformer (got model={cfg.model.name})")
        _require_integer(cfg, "data.context", 1)
        _require(isinstance(d.vocab_size, int) and 2 <= d.vocab_size <= 1 << 16,
                 f"data.vocab_size={d.vocab_size}: must be an integer in [2, 65536]")
    else:
        _require(cfg.model.name != "transformer",
                 f"model=transformer: needs a text corpus, data={'|'.join(text.CORPORA)} (got data={d.name})")
        _require(d.num_examples is None or (isinstance(d.num_examples, int) and d.num_examples >= 1),
                 f"data.num_examples={d.num_examples}: must be an integer >= 1 or null (all)")
        if d.batch_size is not None and d.num_examples is not None:
            _require(d.batch_size <= d.num_examples, f"data.batch_size={d.batch_size}: must be <= "
                     f"data.num_examples={d.num_examples} (or null = full batch)")
        _require(d.augment.crop >= 0, f"data.augment.crop={d.augment.crop}: must be >= 0 pixels")
        _require(isinstance(d.augment.flip, bool), f"data.augment.flip={d.augment.flip}: must be true or false")
        _require(d.augment.mixup_alpha >= 0, f"data.augment.mixup_alpha={d.augment.mixup_alpha}: must be >= 0 (0 = off)")
    h = cfg.sharpness
    _require(h.method in curvature.METHODS,
             f"sharpness.method={h.method}: unknown; allowed: {', '.join(curvature.METHODS)}")
    _require_integer(cfg, "sharpness.every", 0, " (0 = off)")
    for key in ("sharpness.max_iters", "sharpness.init_max_iters"):
        _require_integer(cfg, key, 1)
    for key in ("tol", "init_tol"):
        _require(isinstance(h[key], (int, float)) and h[key] >= 0,
                 f"sharpness.{key}={h[key]}: must be a number >= 0 (the relative residual that stops the solver; "
                 f"0 = always max_iters)")
    _require(h.dtype in curvature.DTYPES, f"sharpness.dtype={h.dtype}: unknown; allowed: {', '.join(curvature.DTYPES)}")


class Built(NamedTuple):
    """Plain objects built from a config: everything `execute` needs to train."""
    arrays: loop.Arrays
    train_eval: tuple[np.ndarray, np.ndarray]  # the training set as evaluation examples (x, y), on the host
    chance_acc: float  # accuracy of the best input-blind guess (`loop.run_status`)
    model: Any
    params: Any
    tx: Any
    loss_fn: Any
    lr_multipliers: Any  # full-μP per-layer Adam rates, or None
    loop_cfg: loop.LoopConfig
    key: jax.Array


class _Data(NamedTuple):
    arrays: loop.Arrays
    train_eval: tuple[np.ndarray, np.ndarray]
    num_classes: int
    chance_acc: float


def _image_data(cfg: DictConfig) -> _Data:
    """The seeded training subset, its measurement batch and the padded test set, one-hot targets."""
    d = cfg.data
    dataset = data.load(d.name, d.root)
    x_train, y_train = data.subset(dataset.x_train, dataset.y_train, d.num_examples, cfg.seed)
    if d.batch_size is not None:
        _require(d.batch_size <= len(x_train),
                 f"data.batch_size={d.batch_size}: must be <= the {len(x_train)} training examples (or null)")
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
    return _Data(arrays, train_windows, streams.vocab_size, text.most_frequent_share(streams.train, streams.vocab_size))


def build(cfg: DictConfig) -> Built:
    """Data on the device, the model and its initial parameters, the optimiser, the loop's static choices."""
    d = cfg.data
    language = d.name in text.CORPORA
    arrays, train_eval, k, chance_acc = _text_data(cfg) if language else _image_data(cfg)
    options = {key: value for key, value in cfg.model.items() if key not in ("name", "width", "depth")}
    model = models.build_model(cfg.model.name, param=cfg.param.name, num_classes=k,
                               width=cfg.model.width, depth=cfg.model.depth, **options)
    init_key, loop_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params = jax.jit(model.init)(init_key, arrays.x_measure[:1])["params"]
    o = cfg.optimizer
    full_mup = o.name != "sgd" and cfg.param.name == "mup" and cfg.param.full_mup  # per-layer rates: Adam only
    multipliers = models.adam_lr_multipliers(params, "mup", full_mup=True) if full_mup else None
    hyper = dict(momentum=o.momentum) if o.name == "sgd" else dict(b1=o.b1, b2=o.b2, eps=o.eps)
    tx = optim.build_optimizer(o.name, seed=cfg.seed, lr_multipliers=multipliers, **hyper)
    h = cfg.sharpness
    batching = dict(context=d.context) if language else dict(
        flip=d.augment.flip, crop=d.augment.crop, mixup_alpha=d.augment.mixup_alpha)
    loop_cfg = loop.LoopConfig(
        optimizer=o.name, **hyper, batch_size=d.batch_size, **batching,
        sharpness_every=h.every, sharpness_method=h.method, sharpness_max_iters=h.max_iters, sharpness_tol=h.tol,
        sharpness_dtype=h.dtype, eval_every=cfg.train.eval_every, eval_batch=cfg.train.eval_batch,
        chunk_steps=min(cfg.train.chunk_steps, cfg.train.steps), scan_unroll=cfg.train.scan_unroll)
    return Built(arrays, train_eval, chance_acc, model, params, tx, losses.get(cfg.loss.name), multipliers, loop_cfg,
                 loop_key)


def measurement_loss(b: Built):
    """`loop.measurement_loss` of a built run."""
    return loop.measurement_loss(b.model.apply, b.loss_fn, b.arrays)


def initial_sharpness(b: Built, method: str, max_iters: int, tol: float, dtype: str) -> curvature.EigResult:
    """λ₀ᴴ: a tight solve on the measurement batch at initialisation (it sets η_trgt = c/λ₀ᴴ), in `dtype`; the result
    is returned in the parameters' dtype (its vector is the loop's first warm start)."""
    measure_loss = measurement_loss(b)
    flat, _ = ravel_pytree(b.params)

    @jax.jit
    def solve(params):
        v0 = jax.random.normal(jax.random.PRNGKey(0), flat.shape, flat.dtype).astype(dtype)
        eig = curvature.sharpness(measure_loss, curvature.cast(params, dtype), v0, method=method, max_iters=max_iters,
                                  tol=tol)
        return curvature.cast(eig, flat.dtype)

    with curvature.precision(dtype):
        return solve(b.params)


def search_catapult(b: Built, lr_trgt: float, delta: float, lr_start: float, max_forward_passes: int):
    """η_c (paper Alg. 1–2) from the optimiser's real first step at θ₀, probed on the measurement batch (the
    training set for full-batch runs); η is capped at η_trgt, so `found=False` means η_trgt ≤ η_c."""
    measure_loss = measurement_loss(b)
    direction = catapult.first_direction(b.tx, jax.grad(measure_loss)(b.params), b.params)
    return catapult.search_eta_c(measure_loss, b.params, direction, lr_start=min(lr_start, lr_trgt), lr_max=lr_trgt,
                                 delta=delta, max_forward_passes=max_forward_passes)


class CatapultCheck(NamedTuple):
    outcome: str  # "recovered" (a catapult), "diverged" (no catapult), or "undecided" within the steps
    steps: int  # updates taken
    losses: list[float]  # L(θ_t)/L(θ₀) on the measurement batch, t = 0 … steps


def check_catapult(b: Built, eta_c: float, max_steps: int, divergence_factor: float) -> CatapultCheck:
    """Train from θ₀ at constant η_c on the measurement batch (the optimiser's real updates) until the loss returns
    below L(θ₀) — the loss rise of the search was a catapult — or diverges (non-finite, or above divergence_factor ×
    L(θ₀)): then the rise was the onset of divergence and there is no catapult to start the warmup from. SGD on a
    Transformer is such a case (the paper sees no catapults there): LM-4-128 on the pydoc corpus first raises its
    one-step loss near 58/λ₀ᴴ, and GD at that η multiplies the loss by 10⁴ within 4 steps."""
    measure_loss = measurement_loss(b)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(measure_loss)(params)
        updates, opt_state = b.tx.update(grads, opt_state, params)
        return jax.tree.map(lambda p, u: p - eta_c * u, params, updates), opt_state, loss

    params, opt_state = b.params, b.tx.init(b.params)
    losses = []
    for t in range(max_steps + 1):
        params, opt_state, loss = step(params, opt_state)  # `loss` is L(θ_t), before this update
        losses.append(float(loss))
        ratio = losses[-1] / losses[0]
        if not math.isfinite(ratio) or ratio > divergence_factor:
            return CatapultCheck("diverged", t, [x / losses[0] for x in losses])
        if t > 0 and ratio < 1:
            return CatapultCheck("recovered", t, [x / losses[0] for x in losses])
    return CatapultCheck("undecided", max_steps, [x / losses[0] for x in losses])


def _nan_to_none(x) -> float | None:
    x = float(x)
    return None if not math.isfinite(x) else x


_NOT_A_RESULT = ("data.root", "train.progress", "train.chunk_steps", "train.scan_unroll", "exp.")


def finished_summary(cfg: DictConfig, run_dir: pathlib.Path) -> dict | None:
    """The summary of the finished run in `run_dir` (printed as skipped), or None if there is none.

    A finished run of another config is a ConfigError, not a skip: relaunching into a record with changed settings
    would otherwise return the old results under the new ones. Keys that do not change the numbers (`_NOT_A_RESULT`;
    `exp.` is the figure's description, whose numbers reach the run through the keys they set) and keys only one side
    has (a record written before the key existed) are not compared."""
    if (summary := records.finished_summary(run_dir)) is None:
        return None
    if (run_dir / "config.yaml").exists():
        stored = records.flat_config(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")))
        given = records.flat_config(OmegaConf.to_container(cfg, resolve=True))
        for key in sorted(k for k in stored.keys() & given.keys() if not k.startswith(_NOT_A_RESULT)):
            _require(stored[key] == given[key],
                     f"{key}={given[key]}: {run_dir} holds a finished run with {key}={stored[key]}; "
                     "launch into another hydra.run.dir / hydra.sweep.dir, or remove that record")
    print(f"{run_dir}: already finished ({summary['status']}), skipped")
    return summary


def execute(cfg: DictConfig, run_dir: pathlib.Path) -> dict:
    """Train one run into `run_dir`; a run already finished there (with the same config) is not redone."""
    if (summary := finished_summary(cfg, run_dir)) is not None:
        return summary
    start = time.perf_counter()
    validate(cfg)
    if cfg.train.skip_above is not None and (stopper := smaller_lr_that_stopped(cfg, run_dir)):
        summary = dict(status="skipped", skipped_because=stopper.name, lr_trgt=cfg.schedule.lr_trgt,
                       lr_trgt_scale=cfg.schedule.lr_trgt_scale, warmup_steps=cfg.schedule.warmup_steps)
        run_dir.mkdir(parents=True, exist_ok=True)
        records.write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        records.write_summary(run_dir, summary)
        print(f"{run_dir}: skipped, a smaller η_trgt at this T_wrm {records.read_summary(stopper)['status']} "
              f"({stopper})")
        return summary
    try:
        b = build(cfg)
    except ValueError as err:  # the library's own checks (optimiser hyperparameters, model depth, ...)
        raise ConfigError(str(err)) from err
    h = cfg.sharpness
    eig0 = initial_sharpness(b, h.method, h.init_max_iters, h.init_tol, h.dtype)
    lambda0 = float(eig0.value)
    lr_trgt, sched, search = plan_schedule(cfg, b, lambda0)
    steps = cfg.train.steps
    summary = start_record(cfg, run_dir, b, lambda0, lr_trgt, search)

    chunk_fn = loop.make_chunk_fn(b.loop_cfg, b.model.apply, b.loss_fn, b.tx, b.lr_multipliers)
    state = loop.init_state(b.params, b.tx.init(b.params), b.key, eig0.vector)
    first_loss = measurement_loss(b)(b.params)
    loss_bound = cfg.train.divergence_factor * float(first_loss)
    bar = tqdm(total=steps, unit="step", disable=None if cfg.train.progress else True, dynamic_ncols=True, leave=False)
    chunks = []

    def record(state, rows):
        bar.update(len(rows["step"]))
        if len(rows["step"]):
            bar.set_postfix(loss=f"{rows['train_loss'][-1]:.4g}", lr=f"{rows['lr'][-1]:.3g}")
        chunks.append(pd.DataFrame(rows))
        records.write_metrics(run_dir, pd.concat(chunks, ignore_index=True))
        records.write_summary(run_dir, {**summary, "steps_completed": int(state.step)})

    if cfg.schedule.init == "persistent":
        state, sched, found = persistent_warmup(cfg, b, state, lr_trgt, loss_bound, record)
        summary = {**summary, **found}
    for state, rows in loop.run(chunk_fn, state, sched, b.arrays, loss_bound=loss_bound, total_steps=steps):
        record(state, rows)
    bar.close()

    return finish_record(cfg, run_dir, summary, pd.concat(chunks, ignore_index=True), b, state.params,
                         frozen=bool(state.frozen), steps_completed=int(state.step),
                         diverged_step=int(state.diverged_step), evaluate=make_evaluate(b, cfg.train.eval_batch),
                         start=start)


def _cell_key(config: dict) -> dict:
    """A run's resolved config flattened, without η_trgt and the keys that do not change the numbers."""
    return {k: repr(v) for k, v in records.flat_config(config).items()
            if k not in ("schedule.lr_trgt", "schedule.lr_trgt_scale") and not k.startswith(_NOT_A_RESULT)}


def smaller_lr_that_stopped(cfg: DictConfig, run_dir: pathlib.Path) -> pathlib.Path | None:
    """With `train.skip_above` = diverged (or failed: failed or diverged), the sibling record in `run_dir`'s sweep
    folder that stops this cell: same config up to η_trgt, a smaller η_trgt (given the same way), and that status.
    This is how the paper swept: each T_wrm's η axis ends at its first divergence / failure."""
    statuses = {"diverged": ("diverged",), "failed": ("failed", "diverged")}[cfg.train.skip_above]
    which = "lr_trgt" if cfg.schedule.lr_trgt is not None else "lr_trgt_scale"
    mine = OmegaConf.to_container(cfg, resolve=True)
    key = _cell_key(mine)
    for sibling in sorted(pathlib.Path(run_dir).parent.iterdir()):
        summary = records.read_summary(sibling) if sibling != run_dir and sibling.is_dir() else None
        if summary is None or summary.get("status") not in statuses or not (sibling / "config.yaml").exists():
            continue
        theirs = OmegaConf.to_container(OmegaConf.load(sibling / "config.yaml"))
        lr = theirs["schedule"].get(which)
        if lr is not None and lr < mine["schedule"][which] and _cell_key(theirs) == key:
            return sibling
    return None


def plan_schedule(cfg: DictConfig, b: Built, lambda0: float) -> tuple[float, schedules.ScheduleParams | None, dict]:
    """A run's absolute η_trgt (schedule.lr_trgt, or schedule.lr_trgt_scale/λ₀ᴴ), its schedule (linear warmup, or
    catapult-initialised after an η_c search; None for the persistent-catapult warmup, which is decided while
    training) and the search's summary fields ({} for linear)."""
    s = cfg.schedule
    lr_trgt = s.lr_trgt if s.lr_trgt is not None else s.lr_trgt_scale / lambda0
    _require(math.isfinite(lr_trgt) and lr_trgt > 0,
             f"schedule.lr_trgt_scale={s.lr_trgt_scale}: λ₀ᴴ = {lambda0:.4g} at initialisation gives no valid η_trgt")
    decay = dict(decay_power=s.decay_power if s.decay else 0.0, total_steps=cfg.train.steps,
                 lr_min_ratio=s.lr_min_ratio)
    if s.init == "persistent":  # the schedule is found while training: `persistent_warmup`
        return lr_trgt, None, {}
    if s.init == "linear":
        return lr_trgt, schedules.schedule_params(lr_trgt=lr_trgt, warmup_steps=s.warmup_steps, lr_init=s.lr_init,
                                                  exponent=s.exponent, **decay), {}
    found = search_catapult(b, lr_trgt, s.search_delta, s.search_lr_start, s.search_max_forward_passes)
    search = dict(eta_c=found.eta_c, eta_c_found=found.found, search_forward_passes=found.forward_passes)
    if found.found and s.search_check_steps > 0:
        check = check_catapult(b, found.eta_c, s.search_check_steps, cfg.train.divergence_factor)
        search.update(catapult_check=check.outcome, catapult_check_steps=check.steps,
                      catapult_check_losses=check.losses)
        if check.outcome == "diverged":  # no catapult: report it, and warm up linearly from lr_init instead
            print(f"schedule.init=catapult: no catapult — one step at η = {found.eta_c:.4g} raises the loss, but "
                  f"training at that η diverges within {check.steps} steps; warming up from schedule.lr_init instead")
            search.update(eta_c=None, eta_c_found=False, no_catapult_lr=found.eta_c, t_reach=None, t_save=None)
            return lr_trgt, schedules.schedule_params(lr_trgt=lr_trgt, warmup_steps=s.warmup_steps,
                                                      lr_init=s.lr_init, exponent=s.exponent, **decay), search
    search.update(t_reach=float(catapult.t_reach(found.eta_c, lr_trgt, s.warmup_steps)),
                  t_save=float(catapult.t_save(found.eta_c, lr_trgt, s.warmup_steps, found.forward_passes)))
    return lr_trgt, catapult.catapult_schedule(found.eta_c, lr_trgt, s.warmup_steps, **decay), search


def persistent_warmup(cfg: DictConfig, b: Built, state: loop.LoopState, lr_trgt: float, loss_bound: float,
                      record) -> tuple[loop.LoopState, schedules.ScheduleParams, dict]:
    """Alg. 3 (`catapult.persistent_catapult_warmup`) driving the compiled loop one update at a time, so its steps
    log the usual metrics (λᴴ included) through `record(state, rows)`. Catapults are judged on the measurement
    batch (the training set for full-batch runs) and each search probes the optimiser's real next direction there.

    Returns the state when η_trgt is reached, the schedule for the remaining steps (η_trgt from then on, then the
    configured decay), and the summary fields: `t_reach` (updates until η_trgt; None if never) and
    `persistent_catapults` (each catapult's η, start step, recovery step and reference loss L(θ*)).
    """
    s, steps = cfg.schedule, cfg.train.steps
    one_step = loop.make_chunk_fn(dataclasses.replace(b.loop_cfg, chunk_steps=1), b.model.apply, b.loss_fn, b.tx,
                                  b.lr_multipliers)
    measure_loss = measurement_loss(b)
    direction = jax.jit(lambda p, opt_state: b.tx.update(jax.grad(measure_loss)(p), opt_state, p)[0])

    def step_fn(state, lr):
        sched = schedules.schedule_params(lr_trgt=lr, warmup_steps=1)
        state, rows = loop.run_chunk(one_step, state, sched, b.arrays, loss_bound=loss_bound, total_steps=steps)
        record(state, rows)
        return state, math.nan if bool(state.frozen) else float(rows["train_loss"][-1])

    state, _, events, reached = catapult.persistent_catapult_warmup(
        step_fn, measure_loss, lambda st: direction(st.params, st.opt_state), state, params_of=lambda st: st.params,
        lr_trgt=lr_trgt, delta=s.search_delta, lr_start=min(s.search_lr_start, lr_trgt), max_steps=steps,
        max_forward_passes=s.search_max_forward_passes)
    t_reach = int(state.step)
    after = schedules.schedule_params(lr_trgt=lr_trgt, warmup_steps=max(t_reach, 1), lr_init=lr_trgt,
                                      decay_power=s.decay_power if s.decay else 0.0, total_steps=steps,
                                      lr_min_ratio=s.lr_min_ratio)
    found = dict(t_reach=t_reach if reached else None,
                 persistent_catapults=[dict(lr=e.lr, start_step=e.start_step, recovery_step=e.recovery_step,
                                            reference_loss=e.reference_loss) for e in events])
    return state, after, found


def start_record(cfg: DictConfig, run_dir: pathlib.Path, b: Built, lambda0: float, lr_trgt: float, search: dict,
                 **extra) -> dict:
    """config.yaml and a `running` summary.json (a stale metrics.csv of an unfinished attempt is removed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.csv").unlink(missing_ok=True)
    records.write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    summary = dict(status="running", lambda0=lambda0, lr_trgt=lr_trgt, lr_trgt_scale=cfg.schedule.lr_trgt_scale,
                   warmup_steps=cfg.schedule.warmup_steps, steps_completed=0, diverged_step=None,
                   num_params=int(sum(p.size for p in jax.tree.leaves(b.params))),
                   measure_examples=int(b.arrays.x_measure.shape[0]), **search, **extra)
    records.write_summary(run_dir, summary)
    return summary


def make_evaluate(b: Built, eval_batch: int):
    """jitted `(params, x, y, w) -> (mean loss, accuracy)` over a padded set; build once, reuse across runs."""
    return jax.jit(lambda p, x, y, w: loop.evaluate(b.model.apply, b.loss_fn, p, x, y, w, eval_batch))


def finish_record(cfg: DictConfig, run_dir: pathlib.Path, summary: dict, metrics: pd.DataFrame, b: Built, params, *,
                  frozen: bool, steps_completed: int, diverged_step: int, evaluate, start: float) -> dict:
    """The end of a run: final train/test evaluation (none for a diverged run), the status, summary.json."""
    if frozen:
        final_train_loss, final_train_acc = metrics.train_loss.iloc[-1], metrics.train_acc.iloc[-1]
        final_test_loss = final_test_acc = float("nan")
    else:
        final_train_loss, final_train_acc = map(float, evaluate(params, *loop.pad_for_eval(*b.train_eval,
                                                                                           cfg.train.eval_batch)))
        final_test_loss, final_test_acc = map(float, evaluate(params, b.arrays.x_test, b.arrays.y_test,
                                                              b.arrays.w_test))
        final_row = dict(step=cfg.train.steps, train_loss=final_train_loss, train_acc=final_train_acc,
                         test_loss=final_test_loss, test_acc=final_test_acc)
        metrics = pd.concat([metrics, pd.DataFrame([final_row])], ignore_index=True)
        records.write_metrics(run_dir, metrics)
    status = loop.run_status(frozen, float(final_train_acc), b.chance_acc)
    summary = {**summary,
               "status": status, "steps_completed": steps_completed,
               "diverged_step": diverged_step if frozen else None,
               "final_train_loss": _nan_to_none(final_train_loss), "final_train_acc": _nan_to_none(final_train_acc),
               "final_test_loss": _nan_to_none(final_test_loss), "final_test_acc": _nan_to_none(final_test_acc),
               "best_test_acc": _nan_to_none(metrics.test_acc.max()) if metrics.test_acc.notna().any() else None,
               "wall_time_s": time.perf_counter() - start}
    if b.loop_cfg.context is not None and cfg.loss.name == "xent":  # a language model's test perplexity
        summary["final_test_perplexity"] = _nan_to_none(math.exp(min(final_test_loss, 700.0)))
    records.write_summary(run_dir, summary)
    print(f"{run_dir}: {status} after {steps_completed} steps, λ₀ᴴ = {summary['lambda0']:.4g}, "
          f"η_trgt = {summary['lr_trgt']:.4g}, final train loss {final_train_loss:.4g}, test acc {final_test_acc:.4f}")
    return summary



def quiet_jax_logs() -> None:
    """Hydra routes INFO logs to the console; JAX's backend probing (no TPU found, ...) is noise there."""
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    quiet_jax_logs()
    run_dir = pathlib.Path(HydraConfig.get().runtime.output_dir)
    try:
        execute(cfg, run_dir)
    except (ConfigError, FileNotFoundError) as err:
        fail(str(err))
    except Exception as err:  # recorded; a multirun goes on with its other cells and reports the error at the end
        records.write_error(run_dir, err)
        raise


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def precheck(overrides: list[str]) -> None:
    """Compose and validate the config before Hydra runs anything, so bad input is one line, not a traceback or a
    sweep that stops half-way. Every value of a sweep — on the command line (`k=a,b`, `k=range(…)`, `k=choice(…)`) or
    in an experiment's grid (`hydra.sweeper.params`, for keys the command line does not set) — is checked: a config
    group's against its options, then each value composed (groups) or set (other keys), the other sweeps at their
    first values, and validated. With an `interval(…)` or `glob(…)` sweep, which only Hydra expands, only the
    composition is checked."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob, OverrideType
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    def check_options(key, values):
        if (CONFIG_DIR / key).is_dir():
            for value in values:
                if value not in _group_options(key):
                    fail(f"{key}={value}: unknown option; allowed: {', '.join(_group_options(key))}")

    def split_sweeps(parsed, plain, sweeps) -> bool:
        """Plain overrides into `plain`, enumerable sweeps into `sweeps` (and their first value into `plain`);
        whether all were enumerable (not a sweep only Hydra expands)."""
        hydra_expands = False
        for override in parsed:
            key = override.get_key_element()
            if not override.is_sweep_override():
                plain.append(override.input_line)
                values = [override.get_value_element_as_str()]
            elif override.is_discrete_sweep() and not isinstance(override.value(), Glob):
                sweeps.append(override)
                values = list(override.sweep_string_iterator())
                plain.append(f"{key}={values[0]}")
            else:
                hydra_expands = True
                continue
            if override.type != OverrideType.DEL:
                check_options(key.lstrip("+~"), values)
        return not hydra_expands

    try:
        parser = OverridesParser.create()
        parsed = parser.parse_overrides([o for o in overrides if not o.startswith(("hydra.", "hydra/"))])
        plain, sweeps = [], []
        enumerable = split_sweeps(parsed, plain, sweeps)
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            given = {o.get_key_element().lstrip("+~") for o in parsed}
            grid = compose(config_name="train", overrides=plain, return_hydra_config=True).hydra.sweeper.params or {}
            grid = parser.parse_overrides([f"{k}={v}" for k, v in grid.items() if k not in given])
            enumerable &= split_sweeps(grid, plain, sweeps)
            cfg = compose(config_name="train", overrides=plain)
            if not enumerable:
                return
            validate(cfg)
            for override in sweeps:
                key = override.get_key_element().lstrip("+~")
                if (CONFIG_DIR / key).is_dir():
                    others = [o for o in plain if o.partition("=")[0].lstrip("+~") != key]
                    for value in list(override.sweep_string_iterator())[1:]:
                        validate(compose(config_name="train", overrides=[*others, f"{key}={value}"]))
                else:
                    first = OmegaConf.select(cfg, key)
                    for value in list(override.sweep_iterator())[1:]:
                        OmegaConf.update(cfg, key, value, force_add=True)
                        validate(cfg)
                    OmegaConf.update(cfg, key, first, force_add=True)
    except ConfigError as err:
        fail(str(err))
    except (HydraException, OmegaConfBaseException) as err:
        fail(re.sub(r"\s+", " ", str(err)).strip())


def main() -> None:
    args = sys.argv[1:]
    if not any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):  # --config-dir etc.: Hydra's own
        precheck([a for a in args if a not in ("-m", "--multirun")])
    _hydra_main()


if __name__ == "__main__":
    main()
