import io
import zipfile

import jax
import numpy as np
import pytest

from warmup import text
from conftest import wikitext_lines, write_wikitext


def test_tokenizer_round_trip_and_vocab_size():
    train = wikitext_lines(300, seed=0)
    tokenizer = text.train_tokenizer(train.splitlines(keepends=True), vocab_size=80)
    assert tokenizer.get_vocab_size() == 80
    unseen = wikitext_lines(30, seed=1) + "  the  cat\n\n = Mat = \n"  # new sentences, doubled spaces
    ids = text.encode(tokenizer, unseen)
    assert ids.dtype == np.uint16 and len(ids) < len(unseen)
    assert tokenizer.decode(ids.tolist()) == unseen
    unknown = tokenizer.token_to_id(text.UNK)
    assert unknown not in ids and unknown in text.encode(tokenizer, "the cat ~ sat\n")  # '~' never seen


def test_load_wikitext_layout_caches_tokenizer_and_streams(tmp_path):
    write_wikitext(tmp_path)
    streams = text.load("wikitext2", str(tmp_path), vocab_size=64)
    folder = tmp_path / "wikitext-2-raw"
    assert streams.folder == folder and streams.vocab_size == 64
    assert {p.name for p in folder.iterdir()} >= {"bpe64.json", "bpe64.tokens.npz"}
    tokenizer = __import__("tokenizers").Tokenizer.from_file(str(folder / "bpe64.json"))
    assert tokenizer.decode(streams.test.tolist()) == (folder / "wiki.test.raw").read_text()
    stamp = (folder / "bpe64.tokens.npz").stat().st_mtime_ns
    again = text.load("wikitext2", str(tmp_path), vocab_size=64)
    assert (folder / "bpe64.tokens.npz").stat().st_mtime_ns == stamp  # read from the cache, not re-encoded
    for split in text.SPLITS:
        np.testing.assert_array_equal(getattr(again, split), getattr(streams, split))


def test_wikitext_archive_is_extracted(tmp_path):
    source = write_wikitext(tmp_path / "src", folder="wikitext-103-raw", n_train=50, n_eval=10)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for split in text.SPLITS:
            name = f"wikitext-103-raw/wiki.{split}.raw"
            z.write(source / name, name)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "wikitext-103-raw-v1.zip").write_bytes(buffer.getvalue())
    assert text.find_corpus("wikitext103", str(tmp_path / "data")) == tmp_path / "data" / "wikitext-103-raw"
    assert (tmp_path / "data" / "wikitext-103-raw" / "wiki.valid.raw").read_text() == \
        (source / "wikitext-103-raw" / "wiki.valid.raw").read_text()


def test_missing_wikitext_offline_names_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="wikitext-2-raw-v1.zip.*unreachable"):
        text.find_corpus("wikitext2", str(tmp_path / "nothing"))


def test_pydoc_corpus_is_deterministic_and_split_18_1_1(tmp_path):
    splits = text.pydoc_splits()
    assert splits == text.pydoc_splits()
    sizes = {s: len(splits[s]) for s in text.SPLITS}
    total = sum(sizes.values())
    assert total > 300_000  # the reference documentation of any recent CPython
    assert 0.03 < sizes["test"] / total < 0.08 and 0.03 < sizes["valid"] / total < 0.08
    folder = text.find_corpus("pydoc", str(tmp_path))
    assert (folder / "pydoc.test.raw").read_text(encoding="utf-8") == splits["test"]


def test_windows_hold_next_token_targets():
    tokens = np.arange(23, dtype=np.uint16)
    x, y = text.windows(tokens, 5)
    assert x.shape == y.shape == (4, 5) and x.dtype == np.int32
    np.testing.assert_array_equal(x[1], [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(y, x + 1)
    xs, ys = text.sample_windows(tokens, 5, 50, seed=0)
    np.testing.assert_array_equal(ys, xs + 1)
    assert xs.min() >= 0 and ys.max() <= 22
    np.testing.assert_array_equal(xs, text.sample_windows(tokens, 5, 50, seed=0)[0])
    with pytest.raises(ValueError, match="data.context=30"):
        text.windows(tokens, 30)


def test_draw_windows_on_device_are_contiguous_and_cover_every_start():
    stream = np.arange(12, dtype=np.uint16)
    x, y = jax.jit(text.draw_windows, static_argnums=(3, 4))(jax.random.key(0), stream[:-1], stream[1:], 400, 4)
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == (400, 4) and x.dtype == np.int32
    np.testing.assert_array_equal(x, x[:, :1] + np.arange(4))
    np.testing.assert_array_equal(y, x + 1)
    assert set(x[:, 0]) == set(range(8))  # starts 0 … N−1−T, the last window ends on the last token
