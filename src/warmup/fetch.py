"""Downloads of the published dataset files, through pooch: each file checked against its known checksum, a failed
transfer retried, everything in one cache folder per dataset.

    paths = fetch("mnist", dest)      # the dataset's files in `dest`, downloaded where missing

`data.find_root` and `text.find_corpus` call it when no searched folder holds a dataset and its host answers. pooch
writes each file under a temporary name and renames it only once its MD5 matches, so a cut or corrupted transfer
leaves nothing that a later run could mistake for the dataset; a file already in `dest` with the right checksum is
not downloaded again.
"""
import pathlib

import pooch

RETRIES = 3  # further attempts after a failed transfer or a checksum mismatch (pooch waits 1 s, 2 s, … between)
TIMEOUT_S = 30  # connect / per-read timeout of one attempt

_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_CIFAR = "https://www.cs.toronto.edu/~kriz/"
_TINY_IMAGENET = "http://cs231n.stanford.edu/"
_WIKITEXT = "https://wikitext.smerity.com/"

# dataset -> {file: (URL, MD5 of the published file)}
FILES: dict[str, dict[str, tuple[str, str]]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": (_FASHION, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte.gz": (_FASHION, "25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte.gz": (_FASHION, "bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte.gz": (_FASHION, "bb300cfdad3c16e7a12a480ee83cd310"),
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": (_MNIST, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte.gz": (_MNIST, "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte.gz": (_MNIST, "9fb629c4189551a2d022fa330f9573f3"),
        "t10k-labels-idx1-ubyte.gz": (_MNIST, "ec29112dd5afa0611ce80d1b7f02629c"),
    },
    "cifar10": {"cifar-10-python.tar.gz": (_CIFAR, "c58f30108f718f92721af3b95e74349a")},
    "cifar100": {"cifar-100-python.tar.gz": (_CIFAR, "eb9058c3a382ffc7106e4002c42a8d85")},
    "tiny_imagenet": {"tiny-imagenet-200.zip": (_TINY_IMAGENET, "90528d7ca1a48142e341f4ef8d21d0de")},
    "wikitext2": {"wikitext-2-raw-v1.zip": (_WIKITEXT, "f407a2d53283fc4a49bcff21bc5f3770")},
    "wikitext103": {"wikitext-103-raw-v1.zip": (_WIKITEXT, "0ca3512bd7a238be4a63ce7b434f8935")},
}


def host(name: str) -> str:
    """The URL of `name`'s first file (for a quick reachability check before a download is tried)."""
    file, (base, _) = next(iter(FILES[name].items()))
    return base + file


def fetch(name: str, dest: pathlib.Path) -> list[pathlib.Path]:
    """`name`'s published files in `dest`, each downloaded unless it is already there with its checksum.

    Raises OSError (the transfer failed after the retries) or ValueError (a checksum differs; the message names the
    file and both checksums)."""
    dest = pathlib.Path(dest)
    files = FILES[name]
    store = pooch.create(path=dest, base_url="", registry={f: f"md5:{md5}" for f, (_, md5) in files.items()},
                         urls={f: base + f for f, (base, _) in files.items()}, retry_if_failed=RETRIES)
    download = pooch.HTTPDownloader(timeout=TIMEOUT_S)
    return [pathlib.Path(store.fetch(f, downloader=download)) for f in files]
