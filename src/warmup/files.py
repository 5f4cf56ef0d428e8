"""Files that are whole or absent: each is written under a temporary name beside its place, then renamed onto it, so
a reader (or a relaunch after a kill) never sees half of one."""
import contextlib
import os
import pathlib
import tempfile


@contextlib.contextmanager
def atomic_file(path, mode: str = "w"):
    """A file open for writing (`mode` "w" or "wb") under a temporary name in `path`'s folder. When the block ends it
    is synced, made readable by all (mkstemp creates 0600; records and data folders are shared) and renamed onto
    `path`; when the block raises it is removed and `path` is left as it was. A folder that cannot be written is an
    OSError naming it."""
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OSError(f"{path.parent}: cannot write {path.name} there ({err.strerror or err})") from err
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path, content: str | bytes) -> None:
    """Write `content` (text, or bytes) to `path` through `atomic_file`."""
    with atomic_file(path, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
