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

Conv nets on CPU: vmapping a convolution over cells' parameters makes a grouped convolution, which XLA:CPU runs
about 5× slower than the cells' convolutions one after another. There the cells go through `lax.map` instead
(`cell_axis="map"`, chosen by `"auto"`): still one compiled program per group, each cell's chunk run in turn,
on one device.
"""
import logging
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from warmup import build, checkpoints, curvature, loop, records, run
from warmup.config import NOT_A_RESULT, ConfigError, flat, validate

# Config keys a batch may vary: they reach the program as traced arrays or only plan it on the host (η_c search).
TRACED_KEYS = (
    "schedule.lr_trgt", "schedule.lr_trgt_scale", "schedule.warmup_steps", "schedule.lr_init",
    "schedule.exponent", "schedule.decay", "schedule.decay_power", "schedule.lr_min_ratio",
    "schedule.init", "schedule.search_delta", "schedule.search_lr_start", "schedule.search_max_forward_passes",
    "schedule.search_check_steps", "train.divergence_factor", "seed",
)
log = logging.getLogger(__name__)
AXIS = "cells"  # the vmapped axis's name, for loops whose conds reduce over it
CELL_AXES = ("auto", "vmap", "map")
CONV_MODELS = ("cnn", "wrn")


def static_signature(cfg: DictConfig) -> tuple:
    """What must be equal for two cells to share one compiled program: every key but `TRACED_KEYS` and those that do
    not change the numbers (`config.NOT_A_RESULT`: the batch runs with the first cell's)."""
    keys = flat(OmegaConf.to_container(cfg, resolve=True))
    return tuple(sorted((k, repr(v)) for k, v in keys.items() if k not in TRACED_KEYS and not k.startswith(NOT_A_RESULT)))


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


def run_batched(cfgs: Sequence[DictConfig], run_dirs: Sequence[pathlib.Path], cell_axis: str = "auto") -> list[dict]:
    """Train every cell of `cfgs` into its `run_dirs[i]` in one compiled program; return the summaries in order.

    Cells whose record is already finished are skipped (their summary is read back); unfinished ones (no record,
    or a `running` one from a killed batch) are trained from the start. The records — config.yaml, metrics.csv,
    summary.json — come from the same lifecycle as `run.execute` (`run.Record`), plus `batched_cells` (how many
    cells shared the program); `wall_time_s` is the batch's time from its start to the end of that cell.
    `cell_axis`: how the program steps the cells — "vmap" (together), "map" (in turn), "auto" (map for conv
    models on CPU, vmap otherwise).
    """
    if cell_axis not in CELL_AXES:
        raise ConfigError(f"hydra.launcher.cell_axis={cell_axis!r}: must be one of {', '.join(CELL_AXES)}")
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
        summaries[i] = records.finished_summary(d, OmegaConf.to_container(cfgs[i], resolve=True))
        if summaries[i] is None:
            todo.append(i)
        else:
            log.info(f"{d}: already finished ({summaries[i]['status']}), skipped")
    if todo:
        for i, summary in zip(todo, _train([cfgs[i] for i in todo], [run_dirs[i] for i in todo], len(cfgs),
                                                 _resolve_cell_axis(cell_axis, cfgs[0]))):
            summaries[i] = summary
    return summaries


def run_grid(cfgs: Sequence[DictConfig], run_dirs: Sequence[pathlib.Path], max_cells: int | None = None,
             cell_axis: str = "auto") -> list[dict | Exception]:
    """Any grid: `partition` it into batchable groups (at most `max_cells` cells per program) and `run_batched` each.

    A group that raises does not stop the others: its unfinished cells are recorded with status `error` and the
    exception is returned in their places. Bad configuration (`config.ConfigError`) is raised before any training.
    """
    run_dirs = [pathlib.Path(d) for d in run_dirs]
    for cfg in cfgs:
        validate(cfg)
    groups = [g[i:i + (max_cells or len(g))] for g in partition(cfgs) for i in range(0, len(g), max_cells or len(g))]
    results: list[dict | Exception] = [None] * len(cfgs)
    for group in groups:
        try:
            for i, summary in zip(group, run_batched([cfgs[i] for i in group], [run_dirs[i] for i in group],
                                                          cell_axis)):
                results[i] = summary
        except ConfigError:
            raise
        except Exception as err:  # recorded per cell; the other groups go on
            for i in group:
                results[i] = records.finished_summary(run_dirs[i])
                if results[i] is None:
                    records.write_error(run_dirs[i], err, OmegaConf.to_container(cfgs[i], resolve=True))
                    results[i] = err
    return results


def _prepare(cfgs: list[DictConfig]) -> tuple[list[build.RunSpec], list[run.Prepared], list[run.Plan]]:
    """Each cell's spec, its seed's prepared run (one build and λ₀ᴴ per seed) and its plan: every check before any
    record is written."""
    specs = [build.spec(cfg) for cfg in cfgs]
    seeds: dict[int, run.Prepared] = {}
    for cfg, spec in zip(cfgs, specs):  # in first-seen order
        if cfg.seed not in seeds:
            seeds[cfg.seed] = run.prepare(cfg, spec)
    m0 = seeds[cfgs[0].seed].built.lr_multipliers
    for p in seeds.values():
        m = p.built.lr_multipliers
        if (m0 is None) != (m is None) or (m is not None and not all(
                jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), m0, m)))):
            raise ValueError("seed: the per-layer learning-rate multipliers differ between seeds; batch one seed")
    cells = [seeds[c.seed] for c in cfgs]
    return specs, cells, [run.plan(cell, spec) for cell, spec in zip(cells, specs)]


def _stacked_arrays(cells: list[run.Prepared]) -> tuple[loop.Arrays, loop.Arrays]:
    """The cells' data: a field shared by every seed is passed once (in_axes None), one that differs is stacked."""
    b0 = cells[0].built
    fields = loop.Arrays._fields
    shared = {f: all(_same(getattr(b0.arrays, f), getattr(c.built.arrays, f)) for c in cells) for f in fields}
    arrays = loop.Arrays(*(getattr(b0.arrays, f) if shared[f] else jnp.stack([getattr(c.built.arrays, f)
                                                                             for c in cells]) for f in fields))
    return arrays, loop.Arrays(*(None if shared[f] else 0 for f in fields))


def _place(n: int, per_cell, arrays: loop.Arrays, array_axes: loop.Arrays):
    """Shard the cell axis over the local devices (the most that divide the `n` cells evenly; XLA partitions the
    vmapped program along it), stacked data fields with it, shared ones replicated. One device: unchanged."""
    devices = jax.local_devices()
    used = max(k for k in range(1, len(devices) + 1) if n % k == 0)
    if used == 1:
        return (*per_cell, arrays)
    mesh = jax.sharding.Mesh(np.array(devices[:used]), (AXIS,))
    by_cell = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    placed = jax.device_put(per_cell, by_cell)
    data = loop.Arrays(*(jax.device_put(a, replicated if axis is None else by_cell)
                         for a, axis in zip(arrays, array_axes)))
    return (*placed, data)


def _resolve_cell_axis(cell_axis: str, cfg: DictConfig) -> str:
    if cell_axis != "auto":
        return cell_axis
    return "map" if cfg.model.name in CONV_MODELS and jax.default_backend() == "cpu" else "vmap"


def _program(chunk_fn, array_axes: loop.Arrays, cell_axis: str):
    """The jitted group program `(state, sched, arrays, loss_bound, steps) -> (state, metrics)`, every output
    with a leading cell axis: the loop's chunk vmapped over the cells, or `lax.map`ped over them."""
    if cell_axis == "vmap":
        return jax.jit(jax.vmap(chunk_fn(axis_name=AXIS), in_axes=(0, 0, array_axes, 0, None), axis_name=AXIS))
    chunk = chunk_fn()

    def mapped(state, sched, arrays, loss_bound, steps):
        stacked = tuple(a if axis == 0 else None for a, axis in zip(arrays, array_axes))

        def cell(xs):
            state_i, sched_i, stacked_i, bound_i = xs
            own = loop.Arrays(*(s if axis == 0 else a for s, a, axis in zip(stacked_i, arrays, array_axes)))
            train = lambda: chunk(state_i, sched_i, own, bound_i, steps)
            _, shapes = jax.eval_shape(train)
            idle = lambda: (state_i, {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()})  # valid = False
            # a diverged or finished cell is skipped, not stepped as a no-op (as vmap must)
            return jax.lax.cond(state_i.frozen | (state_i.step >= steps), idle, train)
        return jax.lax.map(cell, (state, sched, stacked, loss_bound))
    return jax.jit(mapped)


def _train(cfgs: list[DictConfig], run_dirs: list[pathlib.Path], group_size: int, cell_axis: str) -> list[dict]:
    """Train the unfinished cells of a group of `group_size`. Resumed from checkpoints, the group's finished
    (diverged) cells ride along as frozen lanes: a vmapped program of another width rounds differently, and the
    resumed records must equal an uninterrupted run's."""
    start = time.perf_counter()
    for cfg in cfgs:
        validate(cfg)
    specs, cells, plans = _prepare(cfgs)
    n, b0, steps = len(cfgs), cells[0].built, specs[0].steps
    fresh = [loop.init_state(c.built.params, c.built.tx.init(c.built.params), c.built.key, c.eig0.vector)
             for c in cells]
    # an interrupted group resumes from its cells' newest common checkpoint, else it starts afresh
    resumed = run.resume_points(run_dirs, specs, fresh)
    resume_step = resumed and int(resumed[0].step)
    if resumed:
        log.info(f"{n} cells resumed from their checkpoints at step {resume_step}")
    recs = [run.Record(d, spec, cell, plan, start, resume_step=resume_step, batched_cells=n)
            for d, spec, cell, plan in zip(run_dirs, specs, cells, plans)]
    riders = group_size - n if resumed else 0
    lanes = list(range(n)) + [0] * riders  # the cell each lane holds; riders copy cell 0, frozen
    states = resumed + [resumed[0]._replace(frozen=np.array(True))] * riders if resumed else fresh
    arrays, array_axes = _stacked_arrays([cells[i] for i in lanes])
    state = _stack(states)
    sched = _stack([plans[i].schedule for i in lanes])
    loss_bound = jnp.asarray([specs[i].divergence_factor * cells[i].first_loss for i in lanes], jnp.float32)
    if cell_axis == "vmap":
        state, sched, loss_bound, arrays = _place(len(lanes), (state, sched, loss_bound), arrays, array_axes)
    chunk = _program(b0.chunk_fn, array_axes, cell_axis)
    evaluate = b0.evaluate_fn(specs[0].eval_batch)
    bar = run.progress_bar(specs[0])
    bar.update(resume_step or 0)
    summaries: list[dict | None] = [None] * n
    open_cells = set(range(n))
    with checkpoints.stop_on_preemption():
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
                before = recs[i].summary["steps_completed"]
                recs[i].append({name: np.asarray(values[i])[valid[i]] for name, values in metrics.items()},
                               int(step[i]))
                if frozen[i] or step[i] >= steps:
                    open_cells.discard(i)
                    summaries[i] = recs[i].finish(_cell(state.params, i), frozen=bool(frozen[i]),
                                                  steps_completed=int(step[i]),
                                                  diverged_step=int(state.diverged_step[i]), evaluate=evaluate)
                else:
                    run.checkpoint_if_due(run_dirs[i], specs[i], _cell(state, i), before)
            checkpoints.stop_if_preempted(run_dirs[0].parent, int(step.max()))
    bar.close()
    return summaries
