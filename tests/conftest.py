import atexit
import gzip
import os
import shutil
import tempfile

# The tests' programs are tiny: compiling them costs more than running them, and XLA's backend optimisation level 0
# compiles them about a third faster (the golden records, made at the default level, still match). Set before jax
# starts; the runs a test starts inherit it through the environment.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
# Each run compiles the same few programs afresh (new closures), here and in the CLI runs the tests start: one
# persistent compilation cache per test process, inherited by its CLI runs, makes the repeats cheap (about 6 s -> 2 s
# per tiny run on 2 CPU cores). One per process, so that no two processes write one entry at once.
os.environ.update(JAX_COMPILATION_CACHE_DIR=tempfile.mkdtemp(prefix="warmup_jax_cache_"),
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import jax  # noqa: E402
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from warmup import config
from warmup.run import execute

# The partitionable threefry lowering compiles several times slower on CPU; the tests only compare runs made here.
jax.config.update("jax_threefry_partitionable", False)


def write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_learnable_idx(folder, n_train=256, n_test=200, size=12, seed=0):
    """A 10-class MNIST-format dataset a small net learns in tens of steps: a class-specific blob plus noise."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, (10, size, size))
    folder.mkdir(parents=True, exist_ok=True)
    files = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    for n, (images, labels) in zip((n_train, n_test), (files[:2], files[2:])):
        y = rng.integers(0, 10, n)
        x = np.clip(0.6 * prototypes[y] + rng.normal(0, 40, (n, size, size)), 0, 255)
        write_idx(folder / images, x, 2051)
        write_idx(folder / labels, y, 2049)
    return folder


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return write_learnable_idx(tmp_path_factory.mktemp("data"))


WORDS = ("the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "quickly", "slowly", "and", "then")


def wikitext_lines(n_lines, seed):
    """WikiText-style raw lines (' = Title = ' headings, sentences of a tiny grammar, spaced punctuation)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_lines):
        if i % 10 == 0:
            lines.append(f" = {WORDS[rng.integers(2, 10)].title()} = \n")
        else:
            word, words = rng.integers(len(WORDS)), []
            for _ in range(rng.integers(4, 12)):  # a Markov chain with two successors per word: learnable
                words.append(WORDS[word])
                word = (3 * word + rng.integers(1, 3)) % len(WORDS)
            lines.append(" " + " ".join(words) + " . \n")
    return "".join(lines)


def write_wikitext(root, folder="wikitext-2-raw", n_train=400, n_eval=40, seed=0):
    """A small corpus in WikiText's published layout: <root>/<folder>/wiki.{train,valid,test}.raw."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate((("train", n_train), ("valid", n_eval), ("test", n_eval))):
        (root / folder / f"wiki.{split}.raw").write_text(wikitext_lines(n, seed + i), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def text_root(tmp_path_factory):
    return write_wikitext(tmp_path_factory.mktemp("text"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WARMUP_OFFLINE", "1")


# For tests that run the CLI in subprocesses (offline; XLA's flags and the compilation cache come with os.environ).
CLI_ENV = {**os.environ, "WARMUP_OFFLINE": "1"}

TINY = ["model.width=32", "model.depth=3", "data.num_examples=128", "train.steps=20", "train.chunk_steps=8",
        "train.eval_every=10", "train.eval_batch=100", "train.progress=false"]


def compose_config(overrides, with_hydra: bool = False):
    with initialize_config_dir(config_dir=str(config.CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=with_hydra)


def runner(base, tmp_path):
    """`run(*overrides) -> (run_dir, summary)`: train `base + overrides` into a fresh directory below `tmp_path`."""
    counter = iter(range(1000))

    def run_(*overrides):
        cfg = compose_config([*base, *overrides])
        run_dir = tmp_path / f"run{next(counter)}"
        return run_dir, execute(cfg, run_dir)

    return run_


@pytest.fixture
def run(data_root, tmp_path):
    """Train a tiny run on the synthetic data into a fresh directory; returns (run_dir, summary)."""
    return runner([*TINY, f"data.root={data_root}"], tmp_path)
