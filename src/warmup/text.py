"""Text corpora for the language-model experiments (paper §4): raw files, a BPE tokenizer, token streams, and
on-device windows.

Corpora (`CORPORA`), each three raw text files, one per split (train / valid / test):
    wikitext2    WikiText-2 raw, `wikitext-2-raw/wiki.{train,valid,test}.raw` (the published layout; the archive
                 `wikitext-2-raw-v1.zip` beside it is extracted). ~2.1M words of training text.
    wikitext103  WikiText-103 raw, `wikitext-103-raw/wiki.{…}.raw` (`wikitext-103-raw-v1.zip`). ~103M words.
    pydoc        the offline default: the Python reference documentation that every CPython ships as
                 `pydoc_data.topics` (the text `help('topic')` prints; ~465k characters, ~65k words and ~118k
                 BPE-4096 tokens for Python 3.11). Its paragraphs (blank-line separated, in topic-name order) are
                 dealt out deterministically: paragraph i goes to test if i % 20 == 19, to valid if i % 20 == 18,
                 else to train (~90/5/5 %, same distribution in each split). It is written to
                 `pydoc-py<major>.<minor>/pydoc.{…}.raw`, since the text differs a little between Python versions.

Files are looked up under `data.root` (and its `<name>/`) when it is given, and nowhere else; otherwise under
`$WARMUP_DATA_DIR` (and its `<name>/`) and `~/.cache/warmup/<name>`. A WikiText archive is downloaded (where the
network is reachable) into `data.root` or `~/.cache/warmup/<name>` and checked against its published checksum
(`fetch.py`).

Tokenizer: byte-pair encoding (Hugging Face `tokenizers`) with `vocab_size` tokens (4096 in the paper), trained on
the training split only. Pre-tokenisation splits at spaces (`Metaspace`: each space is kept as a `▁` that starts
the next piece), so, unlike splitting words and dropping the spaces, `decode(encode(text)) == text` for any text
whose characters occur in the training split; others become `[UNK]`. The tokenizer (`bpe<V>.json`) and the token
streams (`bpe<V>.tokens.npz`, tied to the tokenizer by its hash) are cached beside the raw files, or under
`~/.cache/warmup/<name>` when that folder is read-only.

Device side (pure, jit- and vmap-able): `draw_windows` draws a batch of random contiguous windows from the training
stream inside the compiled step; `windows` / `sample_windows` cut fixed windows for evaluation and for λᴴ.
"""
import hashlib
import os
import pathlib
import sys
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from warmup import data, fetch
from warmup.files import atomic_file, write_atomic

CORPORA = ("wikitext2", "wikitext103", "pydoc")
SPLITS = ("train", "valid", "test")
UNK = "[UNK]"
_PYDOC_EVERY = 20  # paragraph i: test if i % 20 == 19, valid if i % 20 == 18, else train


class _Layout(NamedTuple):
    folder: str  # the folder holding the split files
    pattern: str  # file name with {} for the split
    archive: str | None  # the published zip (None: generated locally)


def _layout(name: str) -> _Layout:
    if name == "wikitext2":
        return _Layout("wikitext-2-raw", "wiki.{}.raw", "wikitext-2-raw-v1.zip")
    if name == "wikitext103":
        return _Layout("wikitext-103-raw", "wiki.{}.raw", "wikitext-103-raw-v1.zip")
    return _Layout(f"pydoc-py{sys.version_info.major}.{sys.version_info.minor}", "pydoc.{}.raw", None)


def check_name(name: str) -> None:
    if name not in CORPORA:
        raise ValueError(f"data.name={name}: unknown corpus; allowed: {', '.join(CORPORA)}")


class TokenStreams(NamedTuple):
    """Each split as one stream of token ids (uint16: vocabularies up to 65 536)."""
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab_size: int  # the tokenizer's actual size (a small corpus can stop short of the requested size)
    folder: pathlib.Path  # where the raw split files are


# ---- the raw files ------------------------------------------------------------------------------------------

def _holds_splits(folder: pathlib.Path, layout: _Layout) -> bool:
    return all((folder / layout.pattern.format(s)).is_file() for s in SPLITS)


def pydoc_splits() -> dict[str, str]:
    """The pydoc corpus's three splits (see the module docstring), from this Python's `pydoc_data.topics`."""
    from pydoc_data.topics import topics

    paragraphs = [p for key in sorted(topics) for p in topics[key].split("\n\n") if p.strip()]
    split_of = lambda i: "test" if i % _PYDOC_EVERY == _PYDOC_EVERY - 1 else (
        "valid" if i % _PYDOC_EVERY == _PYDOC_EVERY - 2 else "train")
    return {s: "".join(p + "\n\n" for i, p in enumerate(paragraphs) if split_of(i) == s) for s in SPLITS}


def _candidates(name: str, root: str | None) -> list[pathlib.Path]:
    """A given `root` (or its `<name>/`) only; else $WARMUP_DATA_DIR (or its `<name>/`) and the cache."""
    given = [pathlib.Path(d).expanduser() for d in ((root,) if root else (os.environ.get(data.ENV_VAR),)) if d]
    cache = () if root else (pathlib.Path.home() / ".cache" / "warmup" / name,)
    return [*(p for d in given for p in (d, d / name)), *cache]


def _extract(archive: pathlib.Path, layout: _Layout) -> None:
    """The split files of a published zip, into the folder beside it (each written atomically)."""
    with zipfile.ZipFile(archive) as z:
        for s in SPLITS:
            member = f"{layout.folder}/{layout.pattern.format(s)}"
            write_atomic(archive.parent / member, z.read(member))


def find_corpus(name: str, root: str | None) -> pathlib.Path:
    """The folder holding `name`'s three split files: found, extracted from the archive, generated (pydoc) or
    downloaded (search order in the module docstring)."""
    check_name(name)
    layout = _layout(name)
    folders = _candidates(name, root)
    dest = pathlib.Path(root).expanduser() if root else folders[-1]
    if layout.archive is None:  # pydoc: (re)written where the corpus is wanted; cheap, and the same every time
        folder = dest / layout.folder
        for s, text in pydoc_splits().items():
            path = folder / layout.pattern.format(s)
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                write_atomic(path, text.encode("utf-8"))
        return folder
    for base in folders:
        if _holds_splits(base / layout.folder, layout):
            return base / layout.folder
        if (base / layout.archive).is_file():
            _extract(base / layout.archive, layout)
            return base / layout.folder
    problem = "and the download host is unreachable"
    if data._online(fetch.host(name)):  # the image loader's network check ($WARMUP_OFFLINE included)
        try:
            fetch.fetch(name, dest)
            _extract(dest / layout.archive, layout)
            return dest / layout.folder
        except (OSError, ValueError, zipfile.BadZipFile, KeyError) as err:  # ValueError: a checksum differs
            problem = f"and the download into {dest} failed ({' '.join(str(err).split())})"
    raise data.DataNotFoundError(
        f"{name}: need {layout.archive} or {layout.folder}/{layout.pattern.format('{train,valid,test}')} in one of "
        f"{', '.join(map(str, folders))} (set data.root or ${data.ENV_VAR} to the folder holding them) {problem}")


# ---- tokenizer and token streams ----------------------------------------------------------------------------

def train_tokenizer(lines, vocab_size: int):
    """A BPE tokenizer with at most `vocab_size` tokens ([UNK] included), trained on an iterable of text pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[UNK], show_progress=False)
    tokenizer.train_from_iterator(lines, trainer)
    return tokenizer


def encode(tokenizer, text: str) -> np.ndarray:
    """Token ids of `text` as uint16, encoded line by line (lines keep their newline)."""
    lines = text.splitlines(keepends=True)
    ids = [e.ids for e in tokenizer.encode_batch(lines)] if lines else []
    return np.fromiter((i for line in ids for i in line), np.uint16)


def _writable(folder: pathlib.Path) -> bool:
    return os.access(folder, os.W_OK)


def load(name: str, root: str | None = None, vocab_size: int = 4096) -> TokenStreams:
    """`name`'s splits as token streams, with the tokenizer trained on its training split (both cached)."""
    from tokenizers import Tokenizer

    if not 2 <= vocab_size <= 1 << 16:
        raise ValueError(f"data.vocab_size={vocab_size}: must be in [2, 65536]")
    folder = find_corpus(name, root)
    layout = _layout(name)
    cache = folder if _writable(folder) else pathlib.Path.home() / ".cache" / "warmup" / name
    cache.mkdir(parents=True, exist_ok=True)
    tokenizer_path, tokens_path = cache / f"bpe{vocab_size}.json", cache / f"bpe{vocab_size}.tokens.npz"
    read = lambda s: (folder / layout.pattern.format(s)).read_text(encoding="utf-8")
    if tokenizer_path.is_file():
        tokenizer_json = tokenizer_path.read_text(encoding="utf-8")
    else:
        tokenizer_json = train_tokenizer(read("train").splitlines(keepends=True), vocab_size).to_str()
        write_atomic(tokenizer_path, tokenizer_json.encode("utf-8"))
    tokenizer = Tokenizer.from_str(tokenizer_json)
    digest = hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()
    streams = None
    if tokens_path.is_file():
        with np.load(tokens_path) as cached:
            if str(cached["tokenizer_sha256"]) == digest:
                streams = {s: cached[s] for s in SPLITS}
    if streams is None:
        streams = {s: encode(tokenizer, read(s)) for s in SPLITS}
        with atomic_file(tokens_path, "wb") as f:
            np.savez(f, tokenizer_sha256=np.array(digest), **streams)
    return TokenStreams(**streams, vocab_size=tokenizer.get_vocab_size(), folder=folder)


def most_frequent_share(tokens: np.ndarray, vocab_size: int) -> float:
    """The share of the most frequent token: the next-token accuracy of the best guess that ignores the context
    (the language-model analogue of 1/K chance accuracy for K balanced classes)."""
    return float(np.bincount(tokens, minlength=vocab_size).max() / len(tokens))


# ---- windows ------------------------------------------------------------------------------------------------

def _check_length(tokens, context: int, what: str) -> None:
    if len(tokens) < context + 1:
        raise ValueError(f"data.context={context}: the {what} has only {len(tokens)} tokens (needs context + 1)")


def windows(tokens: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """All non-overlapping windows: inputs tokens[s : s+T] and next-token targets tokens[s+1 : s+T+1] for
    s = 0, T, 2T, …; the last < T tokens that do not fill a window are left out. int32 (W, T) each."""
    _check_length(tokens, context, "stream")
    count = (len(tokens) - 1) // context
    x = np.asarray(tokens[:count * context], np.int32).reshape(count, context)
    y = np.asarray(tokens[1:count * context + 1], np.int32).reshape(count, context)
    return x, y


def sample_windows(tokens: np.ndarray, context: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` windows (inputs, next-token targets) at start positions drawn by `np.random.default_rng(seed)`."""
    _check_length(tokens, context, "training stream")
    starts = np.random.default_rng(seed).integers(0, len(tokens) - context, count)
    idx = starts[:, None] + np.arange(context)
    return np.asarray(tokens[idx], np.int32), np.asarray(tokens[idx + 1], np.int32)


def draw_windows(key: jax.Array, inputs: jax.Array, targets: jax.Array, batch_size: int,
                 context: int) -> tuple[jax.Array, jax.Array]:
    """`batch_size` windows of `context` tokens at independent uniform start positions (device side).

    `inputs` = stream[:-1] and `targets` = stream[1:], so the window starting at s holds the tokens s … s+T−1 and
    their successors; every start 0 … N−1−T is equally likely. int32 (B, T) each.
    """
    starts = jax.random.randint(key, (batch_size,), 0, inputs.shape[0] - context + 1)
    idx = starts[:, None] + jnp.arange(context)
    return inputs[idx].astype(jnp.int32), targets[idx].astype(jnp.int32)
