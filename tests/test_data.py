import gzip
import io
import pathlib
import pickle
import tarfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from warmup import data
from warmup.data import (DATASETS, DataNotFoundError, Dataset, augment, draw_batch, find_root, load, one_hot,
                         standardize, subset)

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, no real system or home folders, no inherited $WARMUP_DATA_DIR."""
    monkeypatch.setattr(data, "_online", lambda url: False)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(data.ENV_VAR, raising=False)


def write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_mnist(folder, n_train=6, n_test=4):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = dict(x_train=RNG.integers(0, 256, (n_train, 28, 28)), y_train=RNG.integers(0, 10, n_train),
                  x_test=RNG.integers(0, 256, (n_test, 28, 28)), y_test=RNG.integers(0, 10, n_test))
    for (key, a), file in zip(arrays.items(), data._IDX_FILES):
        write_idx(folder / file, a, 2051 if key.startswith("x") else 2049)
    return arrays


def cifar_batch(n, label_key, num_classes):
    return {b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: list(RNG.integers(0, num_classes, n)), b"batch_label": b"test"}


def write_cifar(folder, name, as_tar=False, n=3):
    """Pickled batch dicts of `n` images each in the published layout; returns {file: batch}."""
    c = data._CIFAR[name]
    batches = {f: cifar_batch(n, c.label_key, c.num_classes) for f in (*c.train, c.test)}
    folder.mkdir(parents=True, exist_ok=True)
    if as_tar:
        with tarfile.open(folder / c.archive, "w:gz") as tar:
            for f, batch in batches.items():
                blob = pickle.dumps(batch)
                info = tarfile.TarInfo(f"{c.folder}/{f}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        (folder / c.folder).mkdir()
        for f, batch in batches.items():
            (folder / c.folder / f).write_bytes(pickle.dumps(batch))
    return batches


TINY_WNIDS = ("n03", "n01", "n02")  # not sorted: the class index is the line of wnids.txt
TINY_VAL = (("val_0.JPEG", "n02"), ("val_1.JPEG", "n03"), ("val_2.JPEG", "n01"), ("val_3.JPEG", "n02"))


def write_tiny_imagenet(folder, as_zip=False):
    """A tiny-imagenet-200/ in the published layout (or its .zip): 3 classes × 2 training JPEGs, 4 labelled
    validation JPEGs (val_2 grayscale). Returns {path inside tiny-imagenet-200/: JPEG bytes}."""
    def jpeg(mode="RGB"):
        out = io.BytesIO()
        Image.fromarray(RNG.integers(0, 256, (64, 64, 3) if mode == "RGB" else (64, 64), dtype=np.uint8)).save(
            out, "JPEG")
        return out.getvalue()

    files = {"wnids.txt": "\n".join(TINY_WNIDS).encode() + b"\n",
             "val/val_annotations.txt": b"".join(f"{f}\t{w}\t0\t3\t60\t62\n".encode() for f, w in TINY_VAL)}
    files |= {f"train/{w}/images/{w}_{k}.JPEG": jpeg() for w in TINY_WNIDS for k in range(2)}
    files |= {f"val/images/{f}": jpeg("L" if f == "val_2.JPEG" else "RGB") for f, _ in TINY_VAL}
    folder.mkdir(parents=True, exist_ok=True)
    if as_zip:
        with zipfile.ZipFile(folder / "tiny-imagenet-200.zip", "w") as z:
            for path, blob in files.items():
                z.writestr(f"tiny-imagenet-200/{path}", blob)
    else:
        for path, blob in files.items():
            (folder / "tiny-imagenet-200" / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / "tiny-imagenet-200" / path).write_bytes(blob)
    return files


def decoded(files, paths):
    return np.stack([np.asarray(Image.open(io.BytesIO(files[p])).convert("RGB")) for p in paths])


def assert_standardized(x):
    np.testing.assert_allclose(x.mean((1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std((1, 2, 3)), 1, atol=1e-4)


def test_mnist_idx_round_trip(tmp_path):
    raw = write_mnist(tmp_path)
    ds = load("mnist", str(tmp_path))
    assert isinstance(ds, Dataset) and ds.num_classes == 10
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (4, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(ds.y_train, raw["y_train"])
    np.testing.assert_array_equal(ds.y_test, raw["y_test"])
    np.testing.assert_allclose(ds.x_train, standardize(raw["x_train"][..., None]), rtol=1e-6)
    assert_standardized(ds.x_train)
    assert_standardized(ds.x_test)


def test_bad_idx_magic_is_rejected(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / data._IDX_FILES[0], np.zeros((2, 28, 28)), 2049 + 1000)
    with pytest.raises(data.DataFileError, match="magic") as err:
        load("fashion_mnist", str(tmp_path))
    assert str(err.value).startswith(str(tmp_path / data._IDX_FILES[0])) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_a_truncated_file_is_one_line_naming_it(tmp_path, name):
    """A download cut short: the reader's error (EOFError, a bad pickle) becomes one line naming the file."""
    if name == "cifar10":
        write_cifar(tmp_path, name, as_tar=False)
        victim = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    else:
        write_mnist(tmp_path)
        victim = tmp_path / data._IDX_FILES[0]
    victim.write_bytes(victim.read_bytes()[:len(victim.read_bytes()) // 2])
    with pytest.raises(data.DataFileError) as err:
        load(name, str(tmp_path))
    assert "\n" not in str(err.value) and str(victim.parent) in str(err.value)


def test_a_given_root_without_the_files_never_falls_back_to_another_copy(tmp_path, monkeypatch):
    """The files exist under $WARMUP_DATA_DIR, but data.root names an empty folder: an error naming that folder."""
    write_mnist(tmp_path / "env")
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    assert find_root("fashion_mnist", None) == tmp_path / "env"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as err:
        find_root("fashion_mnist", str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(err.value) and str(tmp_path / "env") + "," not in str(err.value)


@pytest.mark.parametrize("name,as_tar", [("cifar10", False), ("cifar10", True), ("cifar100", False),
                                         ("cifar100", True)])
def test_cifar_pickles_round_trip(tmp_path, name, as_tar):
    batches = write_cifar(tmp_path, name, as_tar)
    c = data._CIFAR[name]
    ds = load(name, str(tmp_path))
    n_train = 3 * len(c.train)
    assert ds.x_train.shape == (n_train, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    assert ds.num_classes == (10 if name == "cifar10" else 100)
    assert ds.y_train.dtype == np.int32 and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.y_train, np.concatenate([batches[f][c.label_key] for f in c.train]))
    np.testing.assert_array_equal(ds.y_test, batches[c.test][c.label_key])
    assert_standardized(ds.x_train)


def test_cifar_channel_first_bytes_land_in_hwc():
    """Row layout: byte c·1024 + i·32 + j is channel c of pixel (i, j)."""
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    batch[b"data"][1, 2 * 1024 + 5 * 32 + 7] = 255  # blue, row 5, column 7 of image 1
    batch[b"data"][1, 0 * 1024 + 0 * 32 + 31] = 100  # red, row 0, column 31
    c = data._CIFAR["cifar10"]
    folder = pathlib.Path(data.SYSTEM_DIR) / "cifar-10"  # also: the system folder is searched
    folder.mkdir(parents=True)
    for f in (*c.train, c.test):
        (folder / f).write_bytes(pickle.dumps(batch))  # the extracted folder itself
    x = load("cifar10").x_train[1]
    top, second = np.argsort(x.ravel())[::-1][:2]
    assert np.unravel_index(top, x.shape) == (5, 7, 2)
    assert np.unravel_index(second, x.shape) == (0, 31, 0)
    np.testing.assert_array_equal(load("cifar10").x_train[0], 0)  # a constant image standardises to zeros


@pytest.mark.parametrize("as_zip", [False, True])
def test_tiny_imagenet_round_trip(tmp_path, as_zip):
    files = write_tiny_imagenet(tmp_path, as_zip)
    ds = load("tiny_imagenet", str(tmp_path))
    assert ds.x_train.shape == (6, 64, 64, 3) and ds.x_test.shape == (4, 64, 64, 3) and ds.num_classes == 3
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    np.testing.assert_array_equal(ds.y_train, [0, 0, 1, 1, 2, 2])  # class by class, in the order of wnids.txt
    np.testing.assert_array_equal(ds.y_test, [2, 0, 1, 2])  # n02, n03, n01, n02 in val_annotations.txt
    train = [f"train/{w}/images/{w}_{k}.JPEG" for w in TINY_WNIDS for k in range(2)]
    np.testing.assert_allclose(ds.x_train, standardize(decoded(files, train)), atol=1e-6)
    np.testing.assert_allclose(ds.x_test, standardize(decoded(files, [f"val/images/{f}" for f, _ in TINY_VAL])),
                               atol=1e-6)
    np.testing.assert_array_equal(ds.x_test[2], ds.x_test[2][..., :1].repeat(3, -1))  # grayscale → equal channels
    assert_standardized(ds.x_train)
    assert_standardized(ds.x_test)


def test_tiny_imagenet_decoded_once_then_read_from_its_cache(tmp_path, monkeypatch):
    write_tiny_imagenet(tmp_path)
    first = load("tiny_imagenet", str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-imagenet-200", "tiny-imagenet-200.npz"]  # no temp
    (tmp_path / "tiny-imagenet-200" / "train" / "n01" / "images" / "n01_0.JPEG").unlink()
    for a, b in zip(first, load("tiny_imagenet", str(tmp_path))):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(data.os, "access", lambda path, mode: False)  # a read-only data folder (we may be root)
    write_tiny_imagenet(tmp_path / "read_only", as_zip=True)
    load("tiny_imagenet", str(tmp_path / "read_only"))
    assert not (tmp_path / "read_only" / "tiny-imagenet-200.npz").exists()
    assert (tmp_path / "home" / ".cache" / "warmup" / "tiny_imagenet" / "tiny-imagenet-200.npz").is_file()


@pytest.mark.parametrize("damage", ["truncated JPEG", "32x32 JPEG", "missing val image", "class without images",
                                    "class not in wnids.txt", "truncated zip"])
def test_a_damaged_tiny_imagenet_is_one_line_naming_the_file(tmp_path, damage):
    write_tiny_imagenet(tmp_path, as_zip=damage == "truncated zip")
    root = tmp_path / "tiny-imagenet-200"
    victim = {"truncated JPEG": root / "train" / "n02" / "images" / "n02_1.JPEG",
              "32x32 JPEG": root / "train" / "n02" / "images" / "n02_1.JPEG",
              "missing val image": root / "val" / "images" / "val_3.JPEG",
              "class without images": root / "train" / "n01" / "images",
              "class not in wnids.txt": root / "train" / "n99" / "images" / "n99_0.JPEG",
              "truncated zip": tmp_path / "tiny-imagenet-200.zip"}[damage]
    if damage == "missing val image":
        victim.unlink()
    elif damage == "class without images":
        for jpeg in victim.iterdir():
            jpeg.unlink()
    elif damage in ("32x32 JPEG", "class not in wnids.txt"):
        victim.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32) if damage == "32x32 JPEG" else (64, 64)).save(victim, "JPEG")
    else:
        victim.write_bytes(victim.read_bytes()[:len(victim.read_bytes()) // 2])
    with pytest.raises(data.DataFileError) as err:
        load("tiny_imagenet", str(tmp_path))
    assert str(err.value).startswith(f"{victim}:") and "\n" not in str(err.value)
    assert not (tmp_path / "tiny-imagenet-200.npz").exists()


def write_digits(folder, rows=1797):
    """scikit-learn's digits.csv.gz layout: per row 64 pixel values 0–16 (8×8, row by row), then the label."""
    pixels = RNG.integers(0, 17, (rows, 64)).astype(float)
    labels = np.arange(rows) % 10
    folder.mkdir(parents=True, exist_ok=True)
    lines = [",".join(f"{v:.1f}" for v in (*p, label)) for p, label in zip(pixels, labels)]
    (folder / "digits.csv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return pixels.reshape(-1, 8, 8, 1), labels


def test_digits_round_trip_with_the_fixed_split(tmp_path):
    pixels, labels = write_digits(tmp_path / "digits")
    ds = load("digits", str(tmp_path))
    assert ds.x_train.shape == (1500, 8, 8, 1) and ds.x_test.shape == (297, 8, 8, 1) and ds.num_classes == 10
    np.testing.assert_array_equal(ds.y_train, labels[:1500])
    np.testing.assert_array_equal(ds.y_test, labels[1500:])
    np.testing.assert_allclose(ds.x_test, standardize(pixels[1500:]), rtol=1e-6)  # pixel [i, j] is column 8 i + j


def test_digits_are_read_from_an_installed_scikit_learn(tmp_path, monkeypatch):
    shipped = tmp_path / "site-packages" / "sklearn" / "datasets" / "data"
    write_digits(shipped)
    monkeypatch.setattr(data, "_sklearn_data", lambda: shipped)
    assert find_root("digits", None) == shipped
    monkeypatch.setattr(data, "_sklearn_data", lambda: None)
    with pytest.raises(DataNotFoundError, match=r"digits\.csv\.gz \(pip install scikit-learn.* it has no download$"):
        find_root("digits", None)


def test_a_damaged_digits_file_is_one_line_naming_it(tmp_path):
    write_digits(tmp_path, rows=100)  # too few rows for the split
    with pytest.raises(data.DataFileError, match=f"^{tmp_path / 'digits.csv.gz'}: not a readable digits"):
        load("digits", str(tmp_path))


def test_standardize_is_per_image():
    x = np.stack([np.arange(12.0).reshape(2, 2, 3), 5 + 100 * np.arange(12.0).reshape(2, 2, 3)])
    z = standardize(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z[0], z[1], atol=1e-6)  # affine changes of one image do not matter
    assert_standardized(z)


def test_env_var_and_its_name_subfolder(tmp_path, monkeypatch):
    write_mnist(tmp_path / "env" / "mnist")
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    assert find_root("mnist", None) == tmp_path / "env" / "mnist"
    write_mnist(tmp_path / "explicit")
    assert find_root("mnist", str(tmp_path / "explicit")) == tmp_path / "explicit"  # root comes first


def test_home_cache_is_searched(tmp_path):
    write_cifar(tmp_path / "home" / ".cache" / "warmup" / "cifar100", "cifar100", as_tar=True)
    assert find_root("cifar100", None) == tmp_path / "home" / ".cache" / "warmup" / "cifar100"


def test_missing_files_raise_one_line_naming_them(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    write_mnist(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError) as err:
        load("fashion_mnist", str(tmp_path / "partial"))
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError) and "\n" not in msg
    assert msg.startswith("fashion_mnist:")
    assert all(f in msg for f in data._IDX_FILES)
    assert str(tmp_path / "partial") in msg and data.ENV_VAR in msg
    with pytest.raises(DataNotFoundError, match=r"cifar-10-python\.tar\.gz .*data_batch_5, test_batch") as err:
        find_root("cifar10", None)
    assert str(tmp_path / "env") in str(err.value)


def test_unknown_name():
    with pytest.raises(ValueError, match="allowed: fashion_mnist, mnist, cifar10, cifar100, tiny_imagenet, digits"):
        load("imagenet")
    assert DATASETS == ("fashion_mnist", "mnist", "cifar10", "cifar100", "tiny_imagenet", "digits")


def test_subset_is_seeded():
    x, y = np.arange(100.0)[:, None], np.arange(100)
    xa, ya = subset(x, y, 10, seed=1)
    xb, yb = subset(x, y, 10, seed=1)
    xc, _ = subset(x, y, 10, seed=2)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(xa[:, 0], ya)  # pairs stay together
    assert len(np.unique(ya)) == 10 and not np.array_equal(xa, xc)
    np.testing.assert_array_equal(ya, np.random.default_rng(1).permutation(100)[:10])  # the documented rule
    assert subset(x, y, None, seed=1)[0] is x
    for bad in (0, 101):
        with pytest.raises(ValueError, match=r"data\.num_examples=.*\[1, 100\]"):
            subset(x, y, bad, seed=0)


def test_one_hot_numpy_and_jax():
    y = np.array([2, 0, 1])
    expected = np.eye(3, dtype=np.float32)[y]
    out = one_hot(y, 3)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    jout = jax.jit(one_hot, static_argnums=1)(jnp.asarray(y), 3)
    assert isinstance(jout, jax.Array) and jout.dtype == jnp.float32
    np.testing.assert_array_equal(jout, expected)


X = jnp.asarray(RNG.normal(size=(16, 6, 5, 2)), jnp.float32)
Y = one_hot(jnp.arange(16) % 4, 4)


def test_draw_batch_distinct_rows_from_the_data():
    assert draw_batch(jax.random.PRNGKey(0), X, Y, None) == (X, Y)
    ids = jnp.arange(50, dtype=jnp.float32)
    xb, yb = jax.jit(draw_batch, static_argnums=3)(jax.random.PRNGKey(0), ids[:, None], ids, 20)
    assert xb.shape == (20, 1) and yb.shape == (20,)
    assert len(np.unique(yb)) == 20 and np.all(xb[:, 0] == yb)  # no duplicates; x and y stay paired
    batches = jax.vmap(lambda k: draw_batch(k, ids[:, None], ids, 50)[1])(jax.random.split(jax.random.PRNGKey(1), 8))
    assert all(sorted(b.tolist()) == list(range(50)) for b in np.asarray(batches))  # B = N draws everything
    assert len({tuple(b) for b in np.asarray(batches)}) == 8  # keys give different orders
    with pytest.raises(ValueError, match="data.batch_size=51"):
        draw_batch(jax.random.PRNGKey(0), ids, ids, 51)


def test_draw_batch_is_roughly_uniform():
    ids = jnp.arange(10)
    draws = jax.vmap(lambda k: draw_batch(k, ids, ids, 3)[1])(jax.random.split(jax.random.PRNGKey(2), 2000))
    counts = np.bincount(np.asarray(draws).ravel(), minlength=10)
    np.testing.assert_allclose(counts / 2000, 0.3, atol=0.05)


def test_augment_all_off_is_identity():
    x, y = augment(jax.random.PRNGKey(0), X, Y, flip=False, crop=0, mixup_alpha=0.0)
    assert x is X and y is Y


def test_flip_mirrors_exactly_some_images():
    x, y = augment(jax.random.PRNGKey(3), X, Y, flip=True, crop=0, mixup_alpha=0.0)
    same = np.all(np.asarray(x) == np.asarray(X), axis=(1, 2, 3))
    mirrored = np.all(np.asarray(x) == np.asarray(X)[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored) and same.any() and mirrored.any()
    assert y is Y


def test_crop_is_a_zero_filled_shift():
    pad = 2
    x, _ = augment(jax.random.PRNGKey(4), X, Y, flip=False, crop=pad, mixup_alpha=0.0)
    assert x.shape == X.shape
    padded = np.pad(np.asarray(X), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    shifts = set()
    for img, out in zip(padded, np.asarray(x)):
        found = [(i, j) for i in range(2 * pad + 1) for j in range(2 * pad + 1)
                 if np.array_equal(img[i:i + 6, j:j + 5], out)]
        assert found, "each output is one H×W window of the zero-padded image"
        shifts.add(found[0])
    assert len(shifts) > 1


def test_mixup_mixes_each_example_with_the_reversed_batch():
    """With one class per example, y = diag(λ) + diag(1−λ)·J (J the reversal) reveals each example's own λ; x must
    be mixed with the same λ and partner, as the authors' code does."""
    eye = jnp.eye(16)
    x, y = augment(jax.random.PRNGKey(5), X, eye, flip=False, crop=0, mixup_alpha=1.0)
    x, y = np.asarray(x), np.asarray(y)
    lam = np.diag(y)
    np.testing.assert_allclose(y, np.diag(lam) + (1 - lam)[:, None] * np.eye(16)[::-1], atol=1e-6)
    assert np.all((0 < lam) & (lam < 1)) and np.ptp(lam) > 0.3  # one λ ~ U(0, 1) per example
    lam_x = lam.reshape(-1, *[1] * (np.ndim(X) - 1))
    np.testing.assert_allclose(x, lam_x * X + (1 - lam_x) * np.asarray(X)[::-1], rtol=1e-5, atol=1e-6)


def test_augment_jits_and_vmaps_over_keys():
    aug = jax.jit(jax.vmap(lambda k: augment(k, X, Y, flip=True, crop=4, mixup_alpha=0.2)))
    xs, ys = aug(jax.random.split(jax.random.PRNGKey(6), 3))
    assert xs.shape == (3, *X.shape) and ys.shape == (3, *Y.shape)
    assert not np.array_equal(xs[0], xs[1]) and np.all(np.isfinite(xs))
    np.testing.assert_allclose(ys.sum(-1), 1, rtol=1e-6)


@pytest.mark.skipif(not pathlib.Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DIR", pathlib.Path("/usr/share/datasets"))
    ds = load("fashion_mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert np.array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    assert_standardized(ds.x_test[:100])
