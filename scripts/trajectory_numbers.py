"""Print the numbers an experiments/ note quotes, from a sweep's run records (no training).

    python scripts/trajectory_numbers.py multirun/fig1_cpu

Per run: status, λ₀ᴴ (and λ^{P⁻¹H} at step 0 for the Adam family), η_trgt, the catapults (loss rising more than 1.2× above
its running minimum: start step, peak step, peak/minimum ratio), and the late-time λᴴ_t·η_t (mean over the last 20%
of steps; 2 means λᴴ sits at the GD threshold 2/η).
"""
import argparse

import numpy as np

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


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("sweep_dir")
args = parser.parse_args()
for run in sorted(load_runs(args.sweep_dir), key=lambda r: (lookup(r.config, "param.name"),
                                                            lookup(r.config, "schedule.warmup_steps"))):
    m = run.metrics[run.metrics.lr.notna()]
    s = run.summary
    if s.get("status") == "running":
        print(f"{run.path.name:>12}: running ({s['steps_completed']} steps so far)")
        continue
    line = (f"{run.path.name:>12}: {s.get('status'):9} λ₀ᴴ={s['lambda0']:.4g} η_trgt={s['lr_trgt']:.4g} "
            f"T_wrm={s['warmup_steps']}")
    if m.pre_sharpness.notna().any():
        line += f" λ^(P⁻¹H)_0={m.pre_sharpness.dropna().iloc[0]:.3g}"
    if s.get("status") == "diverged":
        line += f" diverged at step {s['diverged_step']}"
    else:
        late = (m.sharpness * m.lr).iloc[int(0.8 * len(m)):].dropna()
        line += f" late λᴴη={late.mean():.3g}" if len(late) else " late λᴴη=n/a (not measured)"
        line += f" final loss={s['final_train_loss']:.3g}"
    events = catapults(m.train_loss.to_numpy())
    line += f" catapults={len(events)}" + "".join(f" [t={a}→{b}, ×{r:.3g}]" for a, b, r in events[:4])
    print(line)
