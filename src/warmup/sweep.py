"""Batched sweeps: many grid cells that differ only in traced values, trained by ONE compiled program.

    from warmup.sweep import run_batched
    summaries = run_batched(cfgs, run_dirs)     # one ordinary run record per cell (design §4)

A cell's η_trgt (absolute or c/λ₀ᴴ), T_wrm, η_init and the other schedule numbers are traced `ScheduleParams`
fields (`schedules.py`), its divergence bound is a traced argument, and its seed only changes arrays (initial
parameters, PRNG keys, the training subset). So `build(cfg)` once per seed, stack the cells' `LoopState`s and
`ScheduleParams` along a leading axis, and `jax.vmap` the loop's chunk function over them: every cell advances
one chunk per program call. A diverged cell is frozen inside the program (the loop's `frozen` flag) and keeps
riding along as a no-op; its record is finished at the chunk boundary where it froze, while the others go on.

Everything else (model, optimiser, data, batch size, steps, sharpness/eval cadence, …) selects code at trace time;
a list whose cells differ there is refused with a ValueError naming the key (`static_signature`, `partition`).

Cost under vmap: a `lax.cond` whose predicate differs per cell becomes a `select` that runs both branches. The
loop's sharpness and test-evaluation conds depend on the per-cell step, so with `sharpness.every = k > 1` or
`train.eval_every > 1` every step pays for a measurement. All live cells share one step count, so the loop can
keep a real cond by reducing `due` over the cell axis: `make_chunk_fn(..., axis_name=...)`, which this module
uses when the loop offers it.
"""
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from warmup import curvature, loop, records, train

# Config keys a batch may vary: they reach the program as traced arrays or only plan it on the host (η_c search).
TRACED_KEYS = (
    "schedule.lr_trgt", "schedule.lr_trgt_scale", "schedule.warmup_steps", "schedule.lr_init",
    "schedule.exponent", "schedule.decay", "schedule.decay_power", "schedule.lr_min_ratio",
    "schedule.init", "schedule.search_delta", "schedule.search_lr_start", "schedule.search_max_forward_passes",
    "schedule.search_check_steps", "train.divergence_factor", "seed",
)
IGNORED_KEYS = ("train.progress",)  # no effect on the result
AXIS = "cells"  # the vmapped axis's name, for loops whose conds reduce over it


def static_signature(cfg: DictConfig) -> tuple:
    """What must be equal for two cells to share one compiled program (everything but `TRACED_KEYS`)."""
    skip = set(TRACED_KEYS) | set(IGNORED_KEYS)
    flat = records.flat_config(OmegaConf.to_container(cfg, resolve=True))
    return tuple(sorted((k, repr(v)) for k, v in flat.items() if k not in skip))


def check_batchable(cfgs: Sequence[DictConfig]) -> None:
    """ValueError naming the first static key on which the cells differ (or why seeds cannot vary)."""
    first = dict(static_signature(cfgs[0]))
    for i, cfg in enumerate(cfgs[1:], 1):
        other = dict(static_signature(cfg))
        # a group's choice (optimizer.name, model.name, …) first: it explains the keys that come with it
        differ = sorted((k for k in first.keys() | other.keys() if first.get(k) != other.get(k)),
                        key=lambda k: (not k.endswith(".name"), k))
        if differ:
            key, more = differ[0], f" (and {', '.join(differ[1:])})" if differ[1:] else ""
            raise ValueError(
                f"{key}: cells 0 and {i} differ ({first.get(key, '<absent>')} vs {other.get(key, '<absent>')}){more}; "
                f"one batch may vary only {', '.join(TRACED_KEYS)}; split the grid with sweep.partition")
    if cfgs[0].schedule.init == "persistent":
        raise ValueError("schedule.init=persistent: its catapults are decided on the host run by run; it cannot be "
                         "batched (allowed here: linear, catapult)")
    if cfgs[0].optimizer.name == "ri_adam" and len({c.seed for c in cfgs}) > 1:
        raise ValueError("seed: RI-Adam's random v₀ is drawn from the seed inside the optimiser (a compile-time "
                         "constant); batch one seed at a time")


def partition(cfgs: Sequence[DictConfig]) -> list[list[int]]:
    """Indices of `cfgs` grouped into batchable lists (same static signature), in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        key = static_signature(cfg) + ((("seed", cfg.seed),) if cfg.optimizer.name == "ri_adam" else ())
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _cell(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def _same(a, b) -> bool:
    return a is b or (a.shape == b.shape and bool(np.array_equal(np.asarray(a), np.asarray(b))))


class _Seed:
    """What a seed determines: the built objects, λ₀ᴴ with its eigenvector, and the initial loss."""

    def __init__(self, cfg: DictConfig):
        try:
            self.built = train.build(cfg)
        except ValueError as err:  # the library's own checks, as in train.execute
            raise train.ConfigError(str(err)) from err
        h, b = cfg.sharpness, self.built
        self.eig0 = train.initial_sharpness(b, h.method, h.init_max_iters, h.init_tol, h.dtype)
        self.lambda0 = float(self.eig0.value)
        self.first_loss = float(train.measurement_loss(b)(b.params))


def run_batched(cfgs: Sequence[DictConfig], run_dirs: Sequence[pathlib.Path]) -> list[dict]:
    """Train every cell of `cfgs` into its `run_dirs[i]` in one vmapped program; return the summaries in order.

    Cells whose record is already finished are skipped (their summary is read back); unfinished ones (no record,
    or a `running` one from a killed batch) are trained from the start. The records — config.yaml, metrics.csv,
    summary.json — have the content and status logic of `train.execute`, plus `batched_cells` (how many cells
    shared the program); `wall_time_s` is the batch's time from its start to the end of that cell.
    """
    if len(cfgs) != len(run_dirs):
        raise ValueError(f"{len(cfgs)} configs but {len(run_dirs)} run directories")
    run_dirs = [pathlib.Path(d) for d in run_dirs]
    if len({d.resolve() for d in run_dirs}) != len(run_dirs):
        raise ValueError("run_dirs: two cells share one run directory")
    if not cfgs:
        return []
    check_batchable(cfgs)
    summaries: list[dict | None] = [None] * len(cfgs)
    todo = []
    for i, d in enumerate(run_dirs):
        summaries[i] = train.finished_summary(cfgs[i], d)
        if summaries[i] is None:
            todo.append(i)
    if todo:
        for i, summary in zip(todo, _train([cfgs[i] for i in todo], [run_dirs[i] for i in todo])):
            summaries[i] = summary
    return summaries


def run_grid(cfgs: Sequence[DictConfig], run_dirs: Sequence[pathlib.Path], max_cells: int | None = None
             ) -> list[dict | Exception]:
    """Any grid: `partition` it into batchable groups (at most `max_cells` cells per program) and `run_batched` each.

    A group that raises does not stop the others: its unfinished cells are recorded with status `error` and the
    exception is returned in their places. Bad configuration (`train.ConfigError`) is raised before any training.
    """
    run_dirs = [pathlib.Path(d) for d in run_dirs]
    for cfg in cfgs:
        train.validate(cfg)
    groups = [g[i:i + (max_cells or len(g))] for g in partition(cfgs) for i in range(0, len(g), max_cells or len(g))]
    results: list[dict | Exception] = [None] * len(cfgs)
    for group in groups:
        try:
            for i, summary in zip(group, run_batched([cfgs[i] for i in group], [run_dirs[i] for i in group])):
                results[i] = summary
        except train.ConfigError:
            raise
        except Exception as err:  # recorded per cell; the other groups go on
            for i in group:
                results[i] = records.finished_summary(run_dirs[i])
                if results[i] is None:
                    records.write_error(run_dirs[i], err)
                    results[i] = err
    return results


def _train(cfgs: list[DictConfig], run_dirs: list[pathlib.Path]) -> list[dict]:
    start = time.perf_counter()
    for cfg in cfgs:
        train.validate(cfg)
    n, cfg0 = len(cfgs), cfgs[0]
    seeds: dict[int, _Seed] = {}
    for cfg in cfgs:  # one build per seed, in first-seen order
        if cfg.seed not in seeds:
            seeds[cfg.seed] = _Seed(cfg)
    cells = [seeds[c.seed] for c in cfgs]
    b0 = cells[0].built
    for s in seeds.values():
        m0, m = b0.lr_multipliers, s.built.lr_multipliers
        if (m0 is None) != (m is None) or (m is not None and not all(
                jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), m0, m)))):
            raise ValueError("seed: the per-layer learning-rate multipliers differ between seeds; batch one seed")

    steps = cfg0.train.steps
    planned = [train.plan_schedule(cfg, cell.built, cell.lambda0) for cfg, cell in zip(cfgs, cells)]  # every check before any record is written
    summaries = []
    for cfg, cell, run_dir, (lr_trgt, _, search) in zip(cfgs, cells, run_dirs, planned):
        # a half-finished earlier attempt is redone from scratch (start_record removes its metrics.csv)
        summaries.append(train.start_record(cfg, run_dir, cell.built, cell.lambda0, lr_trgt, search, batched_cells=n))

    # Arrays: a field shared by every seed is passed once (in_axes None), one that differs is stacked per cell.
    fields = loop.Arrays._fields
    shared = {f: all(_same(getattr(b0.arrays, f), getattr(c.built.arrays, f)) for c in seeds.values())
              for f in fields}
    arrays = loop.Arrays(*(getattr(b0.arrays, f) if shared[f] else jnp.stack([getattr(c.built.arrays, f)
                                                                             for c in cells]) for f in fields))
    array_axes = loop.Arrays(*(None if shared[f] else 0 for f in fields))
    states = [loop.init_state(c.built.params, c.built.tx.init(c.built.params), c.built.key, c.eig0.vector)
              for c in cells]
    state, sched = _stack(states), _stack([p[1] for p in planned])
    loss_bound = jnp.asarray([c.train.divergence_factor * cell.first_loss for c, cell in zip(cfgs, cells)],
                             jnp.float32)
    chunk_fn = loop.make_chunk_fn(b0.loop_cfg, b0.model.apply, b0.loss_fn, b0.tx, b0.lr_multipliers, axis_name=AXIS)
    chunk = jax.jit(jax.vmap(chunk_fn, in_axes=(0, 0, array_axes, 0, None), axis_name=AXIS))

    evaluate = train.make_evaluate(b0, cfg0.train.eval_batch)
    bar = tqdm(total=steps, unit="step", disable=None if cfg0.train.progress else True, dynamic_ncols=True,
               leave=False)
    chunks: list[list[pd.DataFrame]] = [[] for _ in range(n)]
    open_cells = set(range(n))
    while open_cells:
        # vmap re-traces the measurement outside the loop's own float64 context: trace the batch in the
        # measurement's precision mode (training arrays keep their float32 dtypes; records equal sequential runs)
        with curvature.precision(b0.loop_cfg.sharpness_dtype):
            state, metrics = chunk(state, sched, arrays, loss_bound, jnp.int32(steps))
        metrics = jax.device_get(metrics)
        valid = metrics.pop("valid")
        frozen, step = np.asarray(state.frozen), np.asarray(state.step)
        bar.update(int(valid.any(axis=0).sum()))
        bar.set_postfix(running=int((~frozen & (step < steps)).sum()), diverged=int(frozen.sum()))
        for i in sorted(open_cells):
            rows = {name: np.asarray(values[i])[valid[i]] for name, values in metrics.items()}
            chunks[i].append(pd.DataFrame(rows))
            records.write_metrics(run_dirs[i], pd.concat(chunks[i], ignore_index=True))
            records.write_summary(run_dirs[i], {**summaries[i], "steps_completed": int(step[i])})
            if frozen[i] or step[i] >= steps:
                open_cells.discard(i)
                params = _cell(state.params, i)
                summaries[i] = train.finish_record(
                    cfgs[i], run_dirs[i], summaries[i], pd.concat(chunks[i], ignore_index=True), cells[i].built,
                    params, frozen=bool(frozen[i]), steps_completed=int(step[i]),
                    diverged_step=int(state.diverged_step[i]), evaluate=evaluate, start=start)
    bar.close()
    return summaries
