import stat

import numpy as np
import pytest

from warmup import files


def test_text_and_bytes_replace_the_file_whole_and_leave_nothing_else(tmp_path):
    path = tmp_path / "a" / "summary.json"
    files.write_atomic(path, "{}\n")
    files.write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and [p.name for p in path.parent.iterdir()] == ["summary.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # shared records and data, not mkstemp's 0600


def test_a_block_that_raises_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "cache.npz"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), files.atomic_file(path, "wb") as f:
        np.savez(f, x=np.arange(3))
        raise KeyboardInterrupt  # e.g. ^C half-way through a 1 GB cache
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["cache.npz"]
    with files.atomic_file(path, "wb") as f:
        np.savez(f, x=np.arange(3))
    with np.load(path) as z:
        assert list(z["x"]) == [0, 1, 2]


def test_an_unwritable_folder_is_an_oserror_naming_it(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match=f"^{blocker}: cannot write metrics.csv there"):
        files.write_atomic(blocker / "metrics.csv", "step\n")
