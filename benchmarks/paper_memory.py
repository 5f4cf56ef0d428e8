"""Peak device memory of every paper-scale experiment, from XLA's memory analysis of its compiled programs.

What is measured
    For each `+exp=figN` (paper scale) its first sweep cell is built at the paper's shapes — the model, the batch,
    the whole training set on the device (as the loop keeps it) — on stand-in files of the published sizes written
    here (random CIFAR-10 pickles of 50 000 + 10 000 images; a WikiText-2-sized random corpus), and two programs are
    compiled, not run: one training step of the loop (with its λᴴ / λ^{P⁻¹H} measurement and test evaluation when
    the experiment has them) and the λ₀ᴴ solve. For each, XLA's `memory_analysis()` gives the bytes of its
    arguments, outputs and temporaries; the printed peak is the larger program's arguments + outputs + temporaries
    − aliased bytes. On a GPU the figure is the same analysis of the GPU program (run this there); on CPU it is
    XLA:CPU's, a close guide (layouts and fusion differ a little).

How to run (CPU: about 10–20 minutes on 2 cores, mostly compiling WRN-16-4):
    .venv/bin/python benchmarks/paper_memory.py [figN ...]
"""
import pathlib
import pickle
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from hydra import compose, initialize_config_dir
from jax.flatten_util import ravel_pytree

from warmup import build, config, curvature, loop, run, schedules, train

EXPERIMENTS = sorted(p.stem for p in (config.CONFIG_DIR / "exp").glob("fig*.yaml") if p.stem[3:].isdigit())
WORDS = [f"w{i}" for i in range(20000)]


def write_cifar10(root: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in [*((f"data_batch_{i}", 10000) for i in range(1, 6)), ("test_batch", 10000)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(batch))


def write_wikitext(root: pathlib.Path, folder: str, train_words: int) -> None:
    """A random corpus with WikiText-2's word counts (2.1M / 218k / 246k words)."""
    rng = np.random.default_rng(0)
    (root / folder).mkdir(parents=True)
    for split, n in (("train", train_words), ("valid", 218_000), ("test", 246_000)):
        words = np.array(WORDS)[rng.zipf(1.3, n) % len(WORDS)]
        lines = [" ".join(words[i:i + 100]) for i in range(0, n, 100)]
        (root / folder / f"wiki.{split}.raw").write_text("\n".join(lines) + "\n")


def first_cell(name: str, root: pathlib.Path):
    with initialize_config_dir(config_dir=str(config.CONFIG_DIR), version_base="1.3"):
        params = compose("train", [f"+exp={name}"], return_hydra_config=True).hydra.sweeper.params or {}
        overrides = [f"+exp={name}", *(f"{k}={str(v).split(',')[0]}" for k, v in params.items()),
                     f"data.root={root}", "train.chunk_steps=1"]
        return compose("train", overrides)


def peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def programs(cfg) -> dict[str, int]:
    """Peak bytes of the loop's step and of the λ₀ᴴ solve, compiled for this config's shapes."""
    spec, b = build.spec(cfg), build.build(cfg)
    flat, _ = ravel_pytree(b.params)
    state = loop.init_state(b.params, b.tx.init(b.params), b.key, flat)
    sched = schedules.schedule_params(lr_trgt=1e-3, warmup_steps=spec.warmup_steps)
    step = jax.jit(b.chunk_fn()).lower(state, sched, b.arrays, jnp.float32(1e9), jnp.int32(spec.steps)).compile()
    with curvature.precision(spec.eigen["dtype"]):
        lambda0 = run.lambda0_solver(b, **spec.eigen).lower(b.params).compile()
    return {"step": peak_bytes(step), "lambda0": peak_bytes(lambda0)}


def main() -> int:
    train.quiet_jax_logs()
    names = sys.argv[1:] or EXPERIMENTS
    print(f"{'exp':6} {'model':16} {'data':10} {'batch':>6}  {'step GiB':>9} {'λ₀ᴴ GiB':>8}  peak GiB   ({jax.devices()[0].platform})")
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        write_cifar10(root)
        write_wikitext(root, "wikitext-2-raw", 2_100_000)
        for name in names:
            cfg = first_cell(name, root)
            if cfg.data.name == "wikitext103":
                print(f"{name:6} skipped: WikiText-103's 103M-word stand-in is not written here")
                continue
            sizes = programs(cfg)
            model = f"{cfg.model.name}-{cfg.model.depth}-{cfg.model.width}"
            gib = {k: v / 2**30 for k, v in sizes.items()}
            print(f"{name:6} {model:16} {cfg.data.name:10} {str(cfg.data.batch_size or 'full'):>6}  "
                  f"{gib['step']:9.2f} {gib['lambda0']:8.2f}  {max(gib.values()):8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
