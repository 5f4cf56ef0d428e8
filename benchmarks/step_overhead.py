"""Per-step cost of the framework's training loop against a plain jitted step of the same math, and of the λ₀ᴴ
solve against one jitted Hessian-vector product times its iterations.

What is measured
    Wall time per training step of two programs that do the same math on the same model, initial parameters,
    data and PRNG key, in one process:
      framework    the real path: Hydra `compose` of src/warmup/configs/train.yaml with overrides →
                   `config.validate` → `build.build(cfg)` → `Built.chunk_fn()` → `loop.init_state(...)` →
                   `loop.run(...)` consumed to the end, exactly as `run.execute` does (one compiled `lax.scan` chunk
                   of all the steps, its host sync and metric download). Not timed: λ₀ᴴ (`schedule.lr_trgt` is
                   given absolutely), records and the final evaluation.
      plain step   what the arithmetic needs: ONE `jax.jit` step — draw the batch (`data.draw_batch`), augment it
                   (`data.augment`), `value_and_grad` of the mean loss of `model.apply`, the direction d (d = g for
                   GD; heavy ball m ← g + β·m) and θ ← θ − η_t·d with η_t from `schedules.learning_rate` — called
                   once per step from Python (dispatch is asynchronous; one block at the end).
    What the framework does on top, per step: train accuracy, gradient norm, the threshold scalars, the divergence
    test and the `where(apply, new, old)` select over parameters and optimiser state, the carried eigenvectors, an
    optax trace even at momentum 0, plus one host sync and the metric download per chunk.

    Both are compiled by an untimed warm-up call, then timed over REPS repetitions, interleaved (F P, P F, …) so
    slow drifts of a noisy machine hit both; every repetition starts from the same state and ends with
    `block_until_ready`. Reported: the median time per step of each, their ratio framework/plain against the
    case's target, and whether the two give the same final training loss (1e-4 relative: XLA may fuse them
    differently).

    Cases: (fcn) full-batch GD on FCN-4-512 (SP, MSE, 2000 Fashion-MNIST examples), 100 steps, target ≤ 1.10;
           (cnn) full-batch GD on CNN-5-8 (Myrtle-style, SP, MSE, 500 examples), 10 steps, target ≤ 1.2;
           (wrn) minibatch WRN-10-1 (SGD momentum 0.9, xent, B = 128 of 5000, flip + 4-pixel crop), 10 steps,
                 target ≤ 1.2;
           (lambda0) λ₀ᴴ of the CNN case by `run.initial_sharpness` (Lanczos in a `while_loop`, as `run.execute`)
                 against its iteration count × one jitted HVP at θ₀ on the same batch, target ≤ 1.3.
    Convolutions: on XLA:CPU a convolution's gradient inside a loop used to run 5–9× slower than in a plain jitted
    step (jax-ml/jax#12868; `warmup/models/conv.py` says why and how the loop now avoids it). This benchmark is
    where that stays measured.

How to run (CPU; about 4 minutes on 2 cores, `--quick` about 2):
    .venv/bin/python benchmarks/step_overhead.py [--quick] [--reps N] [--cases fcn,cnn,wrn,lambda0]
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

from warmup import build, config, curvature, data, loop, run, schedules

TARGETS = {"fcn": 1.10, "cnn": 1.2, "wrn": 1.2, "lambda0": 1.3}  # framework / plain
STEPS = {"fcn": 100, "cnn": 10, "wrn": 10}
LOSS_RTOL = 1e-4

CASES = {
    "fcn": ("FCN-4-512 SP, full-batch GD, MSE, 2000 Fashion-MNIST",
            ["model=fcn", "model.width=512", "model.depth=4", "param=sp", "optimizer=sgd", "optimizer.momentum=0.0",
             "loss=mse", "data.num_examples=2000", "data.batch_size=null"]),
    "cnn": ("CNN-5-8 SP, full-batch GD, MSE, 500 Fashion-MNIST",
            ["model=cnn", "model.width=8", "model.depth=5", "param=sp", "optimizer=sgd", "optimizer.momentum=0.0",
             "loss=mse", "data.num_examples=500", "data.batch_size=null"]),
    "wrn": ("WRN-10-1, SGD-momentum 0.9, xent, batch 128 of 5000, flip+crop",
            ["model=wrn", "model.width=1", "model.depth=10", "param=sp", "optimizer=sgd", "optimizer.momentum=0.9",
             "loss=xent", "data.num_examples=5000", "data.batch_size=128", "data.augment.flip=true",
             "data.augment.crop=4"]),
}
COMMON = ["data=fashion_mnist", "schedule.lr_trgt=0.1", "schedule.warmup_steps=100",
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
    """A plain jitted step of the same math, called once per step: same model apply, loss, batch draw,
    augmentation, direction and η_t."""
    c = cfg.data.augment
    apply_fn, loss_fn, beta, batch_size = b.model.apply, b.loss_fn, cfg.optimizer.momentum, cfg.data.batch_size
    x_train, y_train = b.arrays.x_train, b.arrays.y_train

    @jax.jit
    def step(params, mom, key, t):
        key, batch_key, aug_key = jax.random.split(key, 3)
        x, y = data.draw_batch(batch_key, x_train, y_train, batch_size)
        x, y = data.augment(aug_key, x, y, flip=c.flip, crop=c.crop, mixup_alpha=c.mixup_alpha)
        loss, g = jax.value_and_grad(lambda p: jnp.mean(loss_fn(apply_fn({"params": p}, x), y)))(params)
        if beta:
            mom = jax.tree.map(lambda gi, mi: gi + beta * mi, g, mom)
        d = mom if beta else g
        lr = schedules.learning_rate(t, sched)
        return jax.tree.map(lambda p, di: p - lr * di, params, d), mom, key, loss

    # the same key stream as the framework: init_state splits off the pre-eigenvector key first
    _, key = jax.random.split(b.key)
    mom = jax.tree.map(jnp.zeros_like, b.params) if beta else None

    def fresh_state():
        return jax.block_until_ready((b.params, mom, key))

    def go(state):
        params, m, k = state
        losses = []
        for t in range(steps):
            params, m, k, loss = step(params, m, k, jnp.int32(t))
            losses.append(loss)
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
    print(f"warm-up (compile + 1 run): framework {t1 - t0:.1f} s, plain step {t2 - t1:.1f} s")

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
    print(f"plain step   per step: median {1e3 * h_med:8.3f} ms   (reps: {ms(h_times)})")
    ok = ratio <= TARGETS[name]
    print(f"ratio framework/plain step: {ratio:.3f}  target <= {TARGETS[name]}  ->  {'PASS' if ok else 'FAIL'}")

    same_len = len(f_losses) == len(h_losses) == steps
    rel = abs(float(f_losses[-1]) - float(h_losses[-1])) / max(abs(float(h_losses[-1])), 1e-12)
    max_rel_curve = float(np.max(np.abs(f_losses - h_losses) / np.maximum(np.abs(h_losses), 1e-12))) if same_len \
        else float("nan")
    flat_f, _ = ravel_pytree(f_params)
    flat_h, _ = ravel_pytree(h_params)
    param_diff = float(jnp.max(jnp.abs(flat_f - flat_h)))
    same = same_len and rel <= LOSS_RTOL
    print(f"final train loss: framework {float(f_losses[-1]):.6g}, plain step {float(h_losses[-1]):.6g} "
          f"(rel diff {rel:.1e}; max over the {steps}-step curve {max_rel_curve:.1e}; "
          f"max |Δθ| {param_diff:.1e})  ->  {'SAME' if same else 'DIFFERENT'}")
    return ok and same


def bench_lambda0(reps: int) -> bool:
    """λ₀ᴴ of the CNN case as `run.execute` solves it, against its iterations × one jitted HVP at θ₀."""
    title, overrides = CASES["cnn"]
    cfg = compose_cfg(COMMON + overrides + ["train.steps=1"])
    b = build.build(cfg)
    h = cfg.sharpness
    solve = lambda: jax.block_until_ready(run.initial_sharpness(b, h.method, h.init_max_iters, h.init_tol, h.dtype))
    measure_loss = b.measurement_loss()
    hvp = jax.jit(lambda p, v: curvature.flat_operator(measure_loss, p)[0](v))
    v = ravel_pytree(b.params)[0]
    one_hvp = lambda: jax.block_until_ready(hvp(b.params, v))
    eig = solve()
    one_hvp()  # compiled
    iters = int(eig.iterations)
    print(f"\n== (lambda0) {title}: λ₀ᴴ = {float(eig.value):.4g} after {iters} Lanczos iterations "
          f"(init_max_iters {h.init_max_iters}, init_tol {h.init_tol:g})")
    s_times, p_times = [], []
    for _ in range(reps):
        start = time.perf_counter()
        solve()
        s_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(5):
            one_hvp()
        p_times.append((time.perf_counter() - start) / 5)
    s_med, p_med = statistics.median(s_times), statistics.median(p_times)
    ratio = s_med / (iters * p_med)
    ok = ratio <= TARGETS["lambda0"]
    print(f"solve {s_med:.2f} s; one jitted HVP {1e3 * p_med:.1f} ms × {iters} = {iters * p_med:.2f} s")
    print(f"ratio solve/(iterations × HVP): {ratio:.3f}  target <= {TARGETS['lambda0']}  ->  {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and reps (smoke test, about 2 minutes)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per path (default 3, quick 2)")
    parser.add_argument("--cases", default="fcn,cnn,wrn,lambda0", help="comma-separated subset of: fcn, cnn, wrn, "
                        "lambda0")
    args = parser.parse_args()
    reps = args.reps or (2 if args.quick else 3)
    steps = {k: max(v // 2, 2) if args.quick else v for k, v in STEPS.items()}
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device), "
          f"data {data.find_root('fashion_mnist', None)}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    results = {name: bench_lambda0(reps) if name == "lambda0" else bench(name, steps[name], reps)
               for name in args.cases.split(",")}
    verdicts = ", ".join(f"{n} {'PASS' if ok else 'FAIL'}" for n, ok in results.items())
    print(f"\nload average {os.getloadavg()[0]:.1f}; summary: {verdicts}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
