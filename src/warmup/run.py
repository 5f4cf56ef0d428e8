"""The one run lifecycle, for single runs (`execute`) and the batched runner (`warmup.sweep`) alike:

    prepare (build, λ₀ᴴ, initial loss) → plan (η_trgt and its schedule) → Record.start → Record.append per chunk
    → Record.finish (final evaluation, `status`, summary.json)

Where a run's status is decided: `status` (converged / diverged / failed) at the end of a run; `running` while it
trains, `skipped` by `train.skip_above`, `error` when it raised (`records.write_error`).
"""
import logging
import math
import pathlib
import time
from typing import NamedTuple

import jax
import numpy as np
import pandas as pd
from jax.flatten_util import ravel_pytree
from omegaconf import DictConfig
from tqdm import tqdm

from warmup import build, catapult, checkpoints, curvature, events, loop, records, schedules
from warmup.config import ConfigError, validate

log = logging.getLogger(__name__)


def status(frozen: bool, final_train_acc: float, chance_acc: float) -> str:
    """diverged (non-finite or exploding loss), failed (final train accuracy < 1.5 × chance), else converged.

    `chance_acc`: the accuracy of the best input-blind guess — 1/K for K balanced classes, the most frequent
    token's share for a language model (where 1/vocabulary would call almost any run converged).
    """
    if frozen:
        return "diverged"
    if not np.isfinite(final_train_acc) or final_train_acc < 1.5 * chance_acc:
        return "failed"
    return "converged"


def initial_sharpness(b: build.Built, method: str, max_iters: int, tol: float, dtype: str) -> curvature.EigResult:
    """λ₀ᴴ: a tight solve on the measurement batch at initialisation (it sets η_trgt = c/λ₀ᴴ), in `dtype`; the result
    is returned in the parameters' dtype (its vector is the loop's first warm start)."""
    with curvature.precision(dtype):
        return lambda0_solver(b, method, max_iters, tol, dtype)(b.params)


def lambda0_solver(b: build.Built, method: str, max_iters: int, tol: float, dtype: str):
    """The jitted λ₀ᴴ solve, `params -> EigResult`; call (or lower) it inside `curvature.precision(dtype)`."""
    measure_loss = b.measurement_loss()
    flat, _ = ravel_pytree(b.params)

    @jax.jit
    def solve(params):
        v0 = jax.random.normal(jax.random.PRNGKey(0), flat.shape, flat.dtype).astype(dtype)
        eig = curvature.sharpness(measure_loss, curvature.cast(params, dtype), v0, method=method, max_iters=max_iters,
                                  tol=tol)
        return curvature.cast(eig, flat.dtype)
    return solve


class Prepared(NamedTuple):
    """What a seed determines: the built objects, λ₀ᴴ with its eigenvector, and the initial measurement loss."""
    built: build.Built
    eig0: curvature.EigResult
    lambda0: float
    first_loss: float


def prepare(cfg: DictConfig, spec: build.RunSpec) -> Prepared:
    b = build.build(cfg)
    eig0 = initial_sharpness(b, **spec.eigen)
    return Prepared(b, eig0, float(eig0.value), float(b.measurement_loss()(b.params)))


class Plan(NamedTuple):
    lr_trgt: float  # absolute η_trgt
    schedule: schedules.ScheduleParams | None  # None: the persistent-catapult warmup decides it while training
    search: dict  # the η_c search's summary fields ({} for a linear warmup)


def plan(p: Prepared, spec: build.RunSpec) -> Plan:
    """Where η comes from: η_trgt (schedule.lr_trgt, or schedule.lr_trgt_scale/λ₀ᴴ) and its schedule — a linear
    warmup, the catapult-initialised one after an η_c search (`catapult.plan_catapult`), or none yet (persistent)."""
    lr_trgt = spec.lr_trgt if spec.lr_trgt is not None else spec.lr_trgt_scale / p.lambda0
    if not (math.isfinite(lr_trgt) and lr_trgt > 0):
        raise ConfigError(f"schedule.lr_trgt_scale={spec.lr_trgt_scale}: λ₀ᴴ = {p.lambda0:.4g} at initialisation "
                          "gives no valid η_trgt")
    if spec.init == "persistent":
        return Plan(lr_trgt, None, {})
    linear = schedules.schedule_params(lr_trgt=lr_trgt, warmup_steps=spec.warmup_steps, lr_init=spec.lr_init,
                                       exponent=spec.exponent, **spec.decay)
    if spec.init == "linear":
        return Plan(lr_trgt, linear, {})
    return Plan(lr_trgt, *catapult.plan_catapult(p.built, spec, lr_trgt, linear))


def _finite_or_none(x) -> float | None:
    x = float(x)
    return None if not math.isfinite(x) else x


class Record:
    """One run's record while it trains: started (config.yaml, a `running` summary), appended chunk by chunk, and
    finished with the final evaluation and the status. `start` is the run's clock (its `wall_time_s`)."""

    def __init__(self, run_dir, spec: build.RunSpec, p: Prepared, plan_: Plan, start: float,
                 extra_files: dict[str, str] | None = None, resume_step: int | None = None, **extra):
        """`resume_step`: continue an interrupted record from its checkpoint at that step (`records.resume`)."""
        self.run_dir, self.spec, self.built, self.start = pathlib.Path(run_dir), spec, p.built, start
        b = p.built
        self.summary = dict(
            status="running", lambda0=p.lambda0, lr_trgt=plan_.lr_trgt, lr_trgt_scale=spec.lr_trgt_scale,
            warmup_steps=spec.warmup_steps, steps_completed=resume_step or 0, diverged_step=None,
            num_params=int(sum(x.size for x in jax.tree.leaves(b.params))),
            measure_examples=int(b.arrays.x_measure.shape[0]), **plan_.search, **extra)
        self.chunks: list[pd.DataFrame] = []
        self.columns: list[str] = []  # metrics.csv's header, fixed by the first chunk
        if resume_step is None:
            records.start(self.run_dir, spec.config, self.summary, extra_files)
        else:
            kept = records.resume(self.run_dir, spec.config, self.summary, resume_step, extra_files)
            # as the device wrote them: float32, so the final summary equals an uninterrupted run's
            self.chunks.append(kept.astype({c: np.float32 for c in kept.columns if c != "step"}))
            self.columns = list(kept.columns)
        self.views = events.writers(self.run_dir, spec)
        for view in self.views:
            if self.chunks and len(self.chunks[0]):
                view.write({c: self.chunks[0][c].to_numpy() for c in self.columns})

    def metrics(self) -> pd.DataFrame:
        return pd.concat(self.chunks, ignore_index=True)

    def append(self, rows: dict, steps_completed: int) -> None:
        for view in self.views:
            view.write(rows)
        self.chunks.append(pd.DataFrame(rows))
        if not self.columns:
            self.columns = records.metric_columns(self.chunks[0])
        records.append_metrics(self.run_dir, self.chunks[-1], self.columns)
        self.summary["steps_completed"] = steps_completed
        records.write_summary(self.run_dir, self.summary)

    def update(self, **fields) -> None:
        self.summary.update(fields)

    def finish(self, params, *, frozen: bool, steps_completed: int, diverged_step: int, evaluate) -> dict:
        """The end of a run: final train/test evaluation (none for a diverged run), the status, summary.json."""
        metrics = self.metrics()
        if frozen:
            train_loss, train_acc = metrics.train_loss.iloc[-1], metrics.train_acc.iloc[-1]
            test_loss = test_acc = float("nan")
        else:
            b, eval_batch = self.built, self.spec.eval_batch
            train_loss, train_acc = map(float, evaluate(params, *loop.pad_for_eval(*b.train_eval, eval_batch)))
            test_loss, test_acc = map(float, evaluate(params, b.arrays.x_test, b.arrays.y_test, b.arrays.w_test))
            final_row = dict(step=self.spec.steps, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                             test_acc=test_acc)
            metrics = pd.concat([metrics, pd.DataFrame([final_row])], ignore_index=True)
            records.append_metrics(self.run_dir, pd.DataFrame([final_row]), self.columns)
            for view in self.views:
                view.write({k: [v] for k, v in final_row.items()})
        for view in self.views:
            view.close()
        outcome = status(frozen, float(train_acc), self.built.chance_acc)
        summary = {**self.summary,
                   "status": outcome, "steps_completed": steps_completed,
                   "diverged_step": diverged_step if frozen else None,
                   "final_train_loss": _finite_or_none(train_loss), "final_train_acc": _finite_or_none(train_acc),
                   "final_test_loss": _finite_or_none(test_loss), "final_test_acc": _finite_or_none(test_acc),
                   "best_test_acc": _finite_or_none(metrics.test_acc.max()) if metrics.test_acc.notna().any() else None,
                   "wall_time_s": time.perf_counter() - self.start}
        if self.spec.perplexity:
            summary["final_test_perplexity"] = _finite_or_none(math.exp(min(test_loss, 700.0)))
        records.write_summary(self.run_dir, summary)
        checkpoints.remove(self.run_dir)
        log.info(f"{self.run_dir}: {outcome} after {steps_completed} steps, λ₀ᴴ = {summary['lambda0']:.4g}, "
                 f"η_trgt = {summary['lr_trgt']:.4g}, final train loss {train_loss:.4g}, test acc {test_acc:.4f}")
        return summary


def finished_or_skipped(spec: build.RunSpec, run_dir: pathlib.Path) -> dict | None:
    """The summary of this config's finished run in `run_dir` (a ConfigError if another config finished there), or
    of a `train.skip_above` skip (written now); None if the run is to be trained."""
    if (summary := records.finished_summary(run_dir, spec.config)) is not None:
        log.info(f"{run_dir}: already finished ({summary['status']}), skipped")
        return summary
    if spec.skip_above and (stopper := records.smaller_lr_that_stopped(spec.config, run_dir, spec.skip_above)):
        summary = dict(status="skipped", skipped_because=stopper.name, lr_trgt=spec.lr_trgt,
                       lr_trgt_scale=spec.lr_trgt_scale, warmup_steps=spec.warmup_steps)
        records.start(run_dir, spec.config, summary)
        log.info(f"{run_dir}: skipped, a smaller η_trgt at this T_wrm {records.read_summary(stopper)['status']} "
                 f"({stopper})")
        return summary
    return None


def resume_points(run_dirs, specs, fresh: list[loop.LoopState]) -> list[loop.LoopState] | None:
    """The states to continue from: each run's checkpoint at the newest step that all of them have (a batched group
    advances in lockstep; a single run: its newest), shaped like its `fresh` state, if every run is an interrupted
    record of its config; None to start afresh (their checkpoints are removed). A persistent-catapult warmup (its own
    host-driven phase) always starts afresh."""
    saved = [set(checkpoints.steps(d)) if spec.init != "persistent" and records.interrupted_with(d, spec.config)
             else set() for d, spec in zip(run_dirs, specs)]
    if common := set.intersection(*saved):
        return [checkpoints.restore(d, f, max(common)) for d, f in zip(run_dirs, fresh)]
    for d in run_dirs:
        checkpoints.remove(d)
    return None


def checkpoint_if_due(run_dir, spec: build.RunSpec, state: loop.LoopState, before: int) -> None:
    """After a chunk that took the run from step `before` to `state.step`: a checkpoint when it crossed a multiple of
    `train.checkpoint_every` or a preemption signal has arrived; none once the run is over."""
    if not loop.finished(state, spec.steps) and (
            checkpoints.preempted() or checkpoints.due(before, int(state.step), spec.checkpoint_every)):
        checkpoints.save(run_dir, state)


def progress_bar(spec: build.RunSpec) -> tqdm:
    return tqdm(total=spec.steps, unit="step", disable=None if spec.progress else True, dynamic_ncols=True,
                leave=False)


def execute(cfg: DictConfig, run_dir, extra_files: dict[str, str] | None = None) -> dict:
    """Train one run into `run_dir`; a run already finished there (with the same config) is not redone.
    `extra_files` ({relative path: text}) are written with the record when training starts."""
    start, run_dir = time.perf_counter(), pathlib.Path(run_dir)
    validate(cfg)
    spec = build.spec(cfg)
    if (summary := finished_or_skipped(spec, run_dir)) is not None:
        return summary
    p = prepare(cfg, spec)
    plan_ = plan(p, spec)
    b = p.built
    state = loop.init_state(b.params, b.tx.init(b.params), b.key, p.eig0.vector)
    if (resumed := resume_points([run_dir], [spec], [state])) is not None:
        state = resumed[0]
        log.info(f"{run_dir}: resumed from its checkpoint at step {int(state.step)}")
    record = Record(run_dir, spec, p, plan_, start, extra_files, resume_step=resumed and int(state.step))
    loss_bound = spec.divergence_factor * p.first_loss
    bar = progress_bar(spec)
    bar.update(int(state.step))

    def append(state, rows):
        bar.update(len(rows["step"]))
        if len(rows["step"]):
            bar.set_postfix(loss=f"{rows['train_loss'][-1]:.4g}", lr=f"{rows['lr'][-1]:.3g}")
        record.append(rows, int(state.step))

    sched = plan_.schedule
    if spec.init == "persistent":
        state, sched, found = catapult.persistent_warmup(b, spec, state, plan_.lr_trgt, loss_bound, append)
        record.update(**found)
    with checkpoints.stop_on_preemption():
        for state, rows in loop.run(b.chunk_fn(), state, sched, b.arrays, loss_bound=loss_bound,
                                    total_steps=spec.steps):
            before = record.summary["steps_completed"]
            append(state, rows)
            checkpoint_if_due(run_dir, spec, state, before)
            checkpoints.stop_if_preempted(run_dir, int(state.step))
    bar.close()
    return record.finish(state.params, frozen=bool(state.frozen), steps_completed=int(state.step),
                         diverged_step=int(state.diverged_step), evaluate=b.evaluate_fn(spec.eval_batch))

