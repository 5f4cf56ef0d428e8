"""Per-step overhead of the framework's training loop against a minimal hand-written `jax.jit` + `lax.scan` loop.

What is measured
    Wall time per training step of two programs that do the same math on the same model, initial parameters,
    data and PRNG key, in one process:
      framework    the real path: Hydra `compose` of src/warmup/configs/train.yaml with overrides →
                   `config.validate` → `build.build(cfg)` → `Built.chunk_fn()` → `loop.init_state(...)` →
                   `loop.run(...)` consumed to the end, exactly as `run.execute` does (one chunk of all the steps,
                   including its host sync and metric download). Not timed: λ₀ᴴ (`schedule.lr_trgt` is given
                   absolutely, so `execute` would only need it for the summary), records and the final evaluation.
      hand-written one `jax.jit` of a `lax.scan` whose step draws the batch (`data.draw_batch`), augments it
                   (`data.augment`), takes `value_and_grad` of the mean loss of `model.apply`, forms the direction
                   d (d = g for plain GD; heavy ball m ← g + β·m otherwise) and sets θ ← θ − η_t·d with η_t from
                   `schedules.learning_rate`; it returns the final parameters and the per-step losses only.
    What the framework does on top, per step: train accuracy, gradient norm, the sharpness-threshold scalars, the
    divergence test and the `where(apply, new, old)` select over parameters and optimiser state, the carried
    sharpness eigenvectors (passed through, sharpness is off), an optax trace even at momentum 0, plus one host
    sync and the metric download per chunk.

    Both programs are compiled by an untimed warm-up call, then timed over REPS repetitions of the same number of
    steps, framework and hand-written interleaved (F B, B F, F B, …) so slow drifts of a noisy machine hit both;
    every repetition starts from the same initial state and ends with `block_until_ready` (the framework's own
    `loop.run` syncs on the state). Reported: the median time per step of each, their ratio framework/hand-written
    against the target overhead <= 10 %, and whether the two give the same final training loss (they run the same
    math; agreement is checked to a tolerance of 1e-4 relative, as XLA may fuse the two programs differently).

    Cases: (1) full-batch GD on FCN-4-512 (SP, MSE, 2000 Fashion-MNIST examples, warmup 100 steps to η = 0.1),
               default 100 steps × 3 reps;
           (2) minibatch WRN-10-1 (SGD momentum 0.9, cross-entropy, batch 128 of 5000, flip + 4-pixel crop,
               warmup 100 steps to η = 0.1), default 3 steps × 3 reps. Sharpness and evaluation are off in both.
    Why so few WRN steps: on XLA:CPU a convolution's gradient inside a while loop (every `lax.scan`, in both
    programs) runs ~10× slower than the same step in a plain `jit` (jax-ml/jax#12868): ~5–6 s per WRN-10-1 step
    on 2 busy cores against ~0.5 s outside a loop, so 50 steps × 5 reps × 2 programs would take an hour. This
    slows both programs alike and leaves the ratio meaningful; pass `--wrn-steps 50` where time allows.

How to run (CPU; about 4 minutes on 2 cores, `--quick` about 1–2 minutes):
    .venv/bin/python benchmarks/step_overhead.py [--quick] [--reps N] [--fcn-steps N] [--wrn-steps N]
"""
import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from hydra import compose, initialize_config_dir
from jax import lax
from jax.flatten_util import ravel_pytree

from warmup import build, config, data, loop, schedules

TARGET = 0.10  # allowed overhead: framework / hand-written - 1
LOSS_RTOL = 1e-4
DATA_ROOT = "/usr/share/datasets/fashion-mnist"

CASES = {
    "fcn": ("FCN-4-512 SP, full-batch GD, MSE, 2000 Fashion-MNIST",
            ["model=fcn", "model.width=512", "model.depth=4", "param=sp", "optimizer=sgd", "optimizer.momentum=0.0",
             "loss=mse", "data.num_examples=2000", "data.batch_size=null"]),
    "wrn": ("WRN-10-1, SGD-momentum 0.9, xent, batch 128 of 5000, flip+crop",
            ["model=wrn", "model.width=1", "model.depth=10", "param=sp", "optimizer=sgd", "optimizer.momentum=0.9",
             "loss=xent", "data.num_examples=5000", "data.batch_size=128", "data.augment.flip=true",
             "data.augment.crop=4"]),
}
COMMON = ["data=fashion_mnist", f"data.root={DATA_ROOT}", "schedule.lr_trgt=0.1", "schedule.warmup_steps=100",
          "sharpness.every=0", "train.eval_every=0", "train.progress=false", "seed=0"]


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(config.CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    config.validate(cfg)
    return cfg


def framework_runner(cfg, b: build.Built, steps: int):
    """`() -> (final params, per-step train losses)` through make_chunk_fn / init_state / run, as `execute` does."""
    s = cfg.schedule
    sched = schedules.schedule_params(
        lr_trgt=s.lr_trgt, warmup_steps=s.warmup_steps, lr_init=s.lr_init, exponent=s.exponent,
        decay_power=s.decay_power if s.decay else 0.0, total_steps=steps, lr_min_ratio=s.lr_min_ratio)
    chunk_fn = b.chunk_fn()
    # execute passes λ₀ᴴ's eigenvector; with sharpness off it is only carried, so any unit vector does.
    flat, _ = ravel_pytree(b.params)
    eigvec = jax.random.normal(jax.random.PRNGKey(0), flat.shape, flat.dtype)
    eigvec = eigvec / jnp.linalg.norm(eigvec)
    first_loss = float(b.measurement_loss()(b.params))
    loss_bound = cfg.train.divergence_factor * first_loss

    def fresh_state():
        state = loop.init_state(b.params, b.tx.init(b.params), b.key, eigvec)
        return jax.block_until_ready(state)

    def go(state):
        losses = []
        for state, rows in loop.run(chunk_fn, state, sched, b.arrays, loss_bound=loss_bound, total_steps=steps):
            losses.append(rows["train_loss"])
        jax.block_until_ready(state.params)
        return state.params, np.concatenate(losses)

    return fresh_state, go, sched


def baseline_runner(cfg, b: build.Built, sched, steps: int):
    """The minimal hand-written loop: same model apply, loss, batch draw, augmentation, direction and η_t."""
    c = cfg.data.augment
    apply_fn, loss_fn, beta, batch_size = b.model.apply, b.loss_fn, cfg.optimizer.momentum, cfg.data.batch_size

    @jax.jit
    def scan_loop(params, mom, key, sched, x_train, y_train):
        def step(carry, t):
            params, mom, key = carry
            key, batch_key, aug_key = jax.random.split(key, 3)
            x, y = data.draw_batch(batch_key, x_train, y_train, batch_size)
            x, y = data.augment(aug_key, x, y, flip=c.flip, crop=c.crop, mixup_alpha=c.mixup_alpha)
            loss, g = jax.value_and_grad(lambda p: jnp.mean(loss_fn(apply_fn({"params": p}, x), y)))(params)
            if beta:
                mom = jax.tree.map(lambda gi, mi: gi + beta * mi, g, mom)
                d = mom
            else:
                d = g
            lr = schedules.learning_rate(t, sched)
            params = jax.tree.map(lambda p, di: p - lr * di, params, d)
            return (params, mom, key), loss

        (params, _, _), losses = lax.scan(step, (params, mom, key), jnp.arange(steps, dtype=jnp.int32))
        return params, losses

    # the same key stream as the framework: init_state splits off the pre-eigenvector key first
    _, key = jax.random.split(b.key)
    mom = jax.tree.map(jnp.zeros_like, b.params) if beta else None

    def fresh_state():
        return jax.block_until_ready((b.params, mom, key))

    def go(state):
        params, m, k = state
        params, losses = scan_loop(params, m, k, sched, b.arrays.x_train, b.arrays.y_train)
        jax.block_until_ready(params)
        return params, np.asarray(losses)

    return fresh_state, go


def timed(fresh_state, go):
    state = fresh_state()
    start = time.perf_counter()
    out = go(state)
    return time.perf_counter() - start, out


def bench(name: str, steps: int, reps: int) -> bool:
    title, overrides = CASES[name]
    cfg = compose_cfg(COMMON + overrides + [f"train.steps={steps}", f"train.chunk_steps={steps}"])
    b = build.build(cfg)
    num_params = sum(p.size for p in jax.tree.leaves(b.params))
    print(f"\n== ({name}) {title}: {num_params:,} parameters, {steps} steps × {reps} reps")
    f_fresh, f_go, sched = framework_runner(cfg, b, steps)
    h_fresh, h_go = baseline_runner(cfg, b, sched, steps)

    t0 = time.perf_counter()
    _, (f_params, f_losses) = timed(f_fresh, f_go)  # compile + first run
    t1 = time.perf_counter()
    _, (h_params, h_losses) = timed(h_fresh, h_go)
    t2 = time.perf_counter()
    print(f"warm-up (compile + 1 run): framework {t1 - t0:.1f} s, hand-written {t2 - t1:.1f} s")

    f_times, h_times = [], []
    for r in range(reps):
        order = [("f", f_fresh, f_go), ("h", h_fresh, h_go)]
        for tag, fresh, go in (order if r % 2 == 0 else order[::-1]):
            seconds, _ = timed(fresh, go)
            (f_times if tag == "f" else h_times).append(seconds / steps)
    f_med, h_med = statistics.median(f_times), statistics.median(h_times)
    ratio = f_med / h_med
    ms = lambda ts: ", ".join(f"{1e3 * t:.2f}" for t in ts)
    print(f"framework    per step: median {1e3 * f_med:8.3f} ms   (reps: {ms(f_times)})")
    print(f"hand-written per step: median {1e3 * h_med:8.3f} ms   (reps: {ms(h_times)})")
    print(f"ratio framework/hand-written: {ratio:.3f}  (overhead {100 * (ratio - 1):+.1f}%)")
    ok = ratio <= 1 + TARGET
    print(f"target: overhead <= {100 * TARGET:.0f}%  ->  {'PASS' if ok else 'FAIL'}")

    same_len = len(f_losses) == len(h_losses) == steps
    rel = abs(float(f_losses[-1]) - float(h_losses[-1])) / max(abs(float(h_losses[-1])), 1e-12)
    max_rel_curve = float(np.max(np.abs(f_losses - h_losses) / np.maximum(np.abs(h_losses), 1e-12))) if same_len \
        else float("nan")
    flat_f, _ = ravel_pytree(f_params)
    flat_h, _ = ravel_pytree(h_params)
    param_diff = float(jnp.max(jnp.abs(flat_f - flat_h)))
    same = same_len and rel <= LOSS_RTOL
    print(f"final train loss: framework {float(f_losses[-1]):.6g}, hand-written {float(h_losses[-1]):.6g} "
          f"(rel diff {rel:.1e}; max over the {steps}-step curve {max_rel_curve:.1e}; "
          f"max |Δθ| {param_diff:.1e})  ->  {'SAME' if same else 'DIFFERENT'}")
    return ok and same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and reps (smoke test, 1-2 minutes)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per path (default 3, quick 2)")
    parser.add_argument("--fcn-steps", type=int, default=None, help="steps per repetition, FCN (default 100, quick 20)")
    parser.add_argument("--wrn-steps", type=int, default=None, help="steps per repetition, WRN (default 3, quick 2)")
    parser.add_argument("--cases", default="fcn,wrn", help="comma-separated subset of: fcn, wrn")
    args = parser.parse_args()
    reps = args.reps or (2 if args.quick else 3)
    steps = dict(fcn=args.fcn_steps or (20 if args.quick else 100), wrn=args.wrn_steps or (2 if args.quick else 3))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device), "
          f"data {DATA_ROOT}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    results = {name: bench(name, steps[name], reps) for name in args.cases.split(",")}
    verdicts = ", ".join(f"{n} {'PASS' if ok else 'FAIL'}" for n, ok in results.items())
    print(f"\nload average {os.getloadavg()[0]:.1f}; summary: {verdicts}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
