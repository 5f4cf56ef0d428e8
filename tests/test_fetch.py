"""Downloads through pooch, served by a local HTTP mirror of files written in the published formats."""
import hashlib
import http.server
import threading
import zipfile

import numpy as np
import pytest

from warmup import data, fetch, text
from test_data import write_mnist, write_tiny_imagenet


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """`serve(name, folder, fail_first=0)`: point `fetch.FILES[name]` at an HTTP server on localhost holding the
    files of `folder` with their real MD5s; the first `fail_first` requests answer 503. Returns the request log."""
    requests: list[str] = []
    servers = []
    monkeypatch.setattr(data, "_online", lambda url: True)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(data.ENV_VAR, raising=False)

    def serve(name, folder, fail_first=0):
        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):
                requests.append(self.path)
                if len(requests) <= fail_first:
                    self.send_error(503)
                else:
                    super().do_GET()

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setitem(fetch.FILES, name, {f: (url, hashlib.md5((folder / f).read_bytes()).hexdigest())
                                                for f in fetch.FILES[name]})
        return requests

    yield serve
    for server in servers:
        server.shutdown()


def test_download_checked_then_cached(tmp_path, mirror):
    raw = write_mnist(tmp_path / "published")
    requests = mirror("mnist", tmp_path / "published")
    cache = tmp_path / "home" / ".cache" / "warmup" / "mnist"
    assert data.find_root("mnist", None) == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(data._IDX_FILES)  # nothing else left behind
    np.testing.assert_array_equal(data.load("mnist").y_test, raw["y_test"])
    assert len(requests) == 4
    fetch.fetch("mnist", cache)  # already there with the right checksums: no new request
    assert len(requests) == 4


def test_a_checksum_mismatch_is_an_error_naming_the_file_and_leaves_nothing(tmp_path, mirror, monkeypatch):
    write_mnist(tmp_path / "published")
    mirror("mnist", tmp_path / "published")
    monkeypatch.setattr(fetch, "RETRIES", 0)
    url, _ = fetch.FILES["mnist"]["t10k-labels-idx1-ubyte.gz"]
    monkeypatch.setitem(fetch.FILES["mnist"], "t10k-labels-idx1-ubyte.gz", (url, "0" * 32))
    with pytest.raises(data.DataNotFoundError, match=r"download into .*dest failed .*t10k-labels-idx1-ubyte\.gz.*"
                                                     r"does not match the known hash"):
        data.find_root("mnist", str(tmp_path / "dest"))
    assert not (tmp_path / "dest" / "t10k-labels-idx1-ubyte.gz").exists()
    with pytest.raises(data.DataNotFoundError):  # and a relaunch does not take the other three for the dataset
        data.find_root("mnist", str(tmp_path / "dest"))


def test_a_failed_transfer_is_retried(tmp_path, mirror, monkeypatch):
    write_mnist(tmp_path / "published")
    requests = mirror("mnist", tmp_path / "published", fail_first=1)
    monkeypatch.setattr(fetch, "RETRIES", 1)
    assert data.find_root("mnist", str(tmp_path / "dest")) == tmp_path / "dest"
    assert len(requests) == 5 and requests[0] == requests[1]  # the first file twice: a 503, then the file


def test_wikitext_archive_downloaded_and_extracted(tmp_path, mirror):
    (tmp_path / "published").mkdir()
    with zipfile.ZipFile(tmp_path / "published" / "wikitext-2-raw-v1.zip", "w") as z:
        for split in text.SPLITS:
            z.writestr(f"wikitext-2-raw/wiki.{split}.raw", f" = {split} = \n the {split} text .\n")
    mirror("wikitext2", tmp_path / "published")
    folder = text.find_corpus("wikitext2", str(tmp_path / "dest"))
    assert folder == tmp_path / "dest" / "wikitext-2-raw"
    assert (folder / "wiki.valid.raw").read_text() == " = valid = \n the valid text .\n"


def test_tiny_imagenet_zip_downloaded_and_read_in_place(tmp_path, mirror):
    write_tiny_imagenet(tmp_path / "published", as_zip=True)
    mirror("tiny_imagenet", tmp_path / "published")
    ds = data.load("tiny_imagenet", str(tmp_path / "dest"))
    assert ds.x_train.shape == (6, 64, 64, 3) and ds.x_test.shape == (4, 64, 64, 3)
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["tiny-imagenet-200.npz", "tiny-imagenet-200.zip"]
