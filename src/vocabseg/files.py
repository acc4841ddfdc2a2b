"""Writing a file atomically: readers see the old file or the whole new one, never a torn one."""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import BinaryIO, Callable


_serial = itertools.count()


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], object]) -> Path:
    """Write ``data`` to ``path``: ``bytes``, ``str`` (UTF-8) or a callable that writes
    to the binary file object it is given. The data goes to ``.{name}.tmp{pid}.{n}`` in the
    same folder (created if missing), is flushed to disk and renamed over ``path``; on
    failure the temporary file is removed and ``path`` is left as it was. The file gets
    the usual mode (0666 less the umask), also when a writer that is given ``f.name``
    (safetensors) replaced the temporary file with one of its own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{next(_serial)}")    # one per writer (threads too)
    try:
        with open(tmp, "wb") as f:
            mode = os.fstat(f.fileno()).st_mode & 0o777      # open() applied the umask
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if callable(data):           # the writer may have written a file of its own under f.name
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
                if os.fstat(fd).st_mode & 0o777 != mode:
                    os.chmod(tmp, mode)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def vocabseg_home() -> Path:
    """Where vocabseg keeps weights and caches: ``$VOCABSEG_HOME``, default ~/.cache/vocabseg."""
    return Path(os.environ.get("VOCABSEG_HOME", Path.home() / ".cache" / "vocabseg"))
