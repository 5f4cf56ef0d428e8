"""Print the numbers an experiments/ note quotes, from a sweep's run records (no training).

    python scripts/trajectory_numbers.py multirun/fig1_cpu [--seeds]

Per run: status, λ₀ᴴ (and λ^{P⁻¹H} at step 0 for the Adam family), η_trgt, the catapults (loss rising more than 1.2× above
its running minimum: start step, peak step, peak/minimum ratio; the largest too when there are more than four), and
the late-time λᴴ_t·η_t (mean over the last 20% of steps; 2 means λᴴ sits at the GD threshold 2/η) and, for the Adam
family, the late λ^{P⁻¹H}_t over its threshold (38/η_t for Adam: 1 means it sits at the edge).
With --seeds, the runs of one cell (configs that differ only in `seed`, grouped as `collect.aggregate` does) are
summarised together: how many diverged or failed, mean ± std over the seeds of λ₀ᴴ, λ^{P⁻¹H}₀, the late λᴴη and
λ^{P⁻¹H}/threshold, the final loss, the number of catapults, the first one's step and size, and the largest one's size.
"""
import argparse
import re

import numpy as np

from warmup.collect import config_columns
from warmup.plots import load_runs, lookup


def catapults(loss: np.ndarray, factor: float = 1.2) -> list[tuple[int, int, float]]:
    """(start, peak, peak / running-minimum) for each excursion of the loss above `factor` × its running minimum."""
    running_min = np.minimum.accumulate(loss)
    above = loss > factor * running_min
    events, t = [], 0
    while t < len(loss):
        if above[t]:
            end = t
            while end < len(loss) and above[end]:
                end += 1
            peak = t + int(np.argmax(loss[t:end]))
            events.append((t, peak, float(loss[peak] / running_min[t])))
            t = end
        else:
            t += 1
    return events


def numbers(run) -> dict:
    """The quoted numbers of one finished run (NaN where a run has none, e.g. no catapult)."""
    m, s = run.metrics[run.metrics.lr.notna()], run.summary
    pre = m.pre_sharpness.dropna()
    tail = m.iloc[int(0.8 * len(m)):]
    late = (tail.sharpness * tail.lr).dropna()
    late_pre = (tail.pre_sharpness / tail.get("pre_sharpness_threshold", np.nan)).dropna()
    events = catapults(m.train_loss.to_numpy())
    diverged = s.get("status") == "diverged"
    return {"status": s.get("status"), "lambda0": s["lambda0"], "lr_trgt": s["lr_trgt"],
            "warmup_steps": s["warmup_steps"], "pre0": pre.iloc[0] if len(pre) else np.nan,
            "diverged_step": s["diverged_step"] if diverged else np.nan,
            "late": np.nan if diverged or not len(late) else late.mean(),
            "late_pre": np.nan if diverged or not len(late_pre) else late_pre.mean(),
            "final_loss": np.nan if diverged else s["final_train_loss"],
            "events": events, "catapults": len(events),
            "first_t": events[0][0] if events else np.nan, "first_ratio": events[0][2] if events else np.nan,
            "largest_t": max(events, key=lambda e: e[2])[1] if events else np.nan,
            "largest_ratio": max(e[2] for e in events) if events else np.nan}


def run_line(name: str, n: dict) -> str:
    line = f"{name:>12}: {n['status']:9} λ₀ᴴ={n['lambda0']:.4g} η_trgt={n['lr_trgt']:.4g} T_wrm={n['warmup_steps']}"
    if not np.isnan(n["pre0"]):
        line += f" λ^(P⁻¹H)_0={n['pre0']:.3g}"
    if n["status"] == "diverged":
        line += f" diverged at step {n['diverged_step']}"
    else:
        line += f" late λᴴη={n['late']:.3g}" if not np.isnan(n["late"]) else " late λᴴη=n/a (not measured)"
        line += f" late λ^(P⁻¹H)/threshold={n['late_pre']:.3g}" if not np.isnan(n["late_pre"]) else ""
        line += f" final loss={n['final_loss']:.3g}"
    line += f" catapults={n['catapults']}" + "".join(f" [t={a}→{b}, ×{r:.3g}]" for a, b, r in n["events"][:4])
    return line + (f" largest ×{n['largest_ratio']:.3g} at t={n['largest_t']}" if len(n["events"]) > 4 else "")


def mean_std(values, fmt: str = ".3g") -> str:
    """'mean ± std (k of n)' over the finite values (sample std, ddof = 1), k of n when some are missing."""
    values = np.asarray(values, float)
    finite = values[np.isfinite(values)]
    text = f"{finite.mean():{fmt}} ± {finite.std(ddof=1) if len(finite) > 1 else 0:{fmt}}"
    return text + (f" ({len(finite)} of {len(values)})" if len(finite) < len(values) else "")


def seeds_line(name: str, group: list[dict]) -> str:
    diverged = [n["diverged_step"] for n in group if n["status"] == "diverged"]
    line = f"{name:>12}: {len(group)} seeds, {len(diverged)} diverged"
    line += f" (steps {', '.join(str(int(t)) for t in diverged)})" if diverged else ""
    line += f", {sum(n['status'] == 'failed' for n in group)} failed"
    for key, label in (("lambda0", "λ₀ᴴ"), ("pre0", "λ^(P⁻¹H)_0"), ("late", "late λᴴη"),
                       ("late_pre", "late λ^(P⁻¹H)/threshold"), ("final_loss", "final loss"),
                       ("catapults", "catapults"), ("first_t", "first catapult t"), ("first_ratio", "its size ×"),
                       ("largest_ratio", "largest ×")):
        at_init = key in ("lambda0", "pre0")  # a diverged run's other numbers are its divergence, not a catapult
        values = [n[key] for n in group if at_init or n["status"] != "diverged"]
        if np.isfinite(np.asarray(values, float)).any():
            line += f"; {label} {mean_std(values)}"
    return line


def cell(config: dict) -> frozenset:
    """A run's cell as `collect.aggregate` groups it: its result-changing config columns without the seed."""
    return frozenset((k, v) for k, v in config_columns(config).items() if k != "seed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir")
    parser.add_argument("--seeds", action="store_true", help="summarise runs that differ only in their seed")
    args = parser.parse_args()
    runs = sorted(load_runs(args.sweep_dir), key=lambda r: (lookup(r.config, "param.name"),
                                                            lookup(r.config, "schedule.warmup_steps"), r.path.name))
    finished = []
    for run in runs:
        if run.summary.get("status") == "running":
            print(f"{run.path.name:>12}: running ({run.summary['steps_completed']} steps so far)")
        else:
            finished.append((run, numbers(run)))
    if not args.seeds:
        for run, n in finished:
            print(run_line(run.path.name, n))
    else:
        groups: dict[frozenset, tuple[str, list[dict]]] = {}
        for run, n in finished:
            name = re.sub(r"_s\d+$", "", run.path.name)
            groups.setdefault(cell(run.config), (name, []))[1].append(n)
        for name, group in groups.values():
            print(seeds_line(name, group))


if __name__ == "__main__":
    main()
