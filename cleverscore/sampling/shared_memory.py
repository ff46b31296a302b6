"""NumPy arrays in POSIX shared memory (posix_ipc), unlinked by their owner on every exit path.

Segment names are `/clever_<pid>_<random>_<tag>`: unique per run, and they carry the owner's
pid so that a later run can recognise and remove segments left by a run that was killed
(SIGKILL gives no chance to clean up). The creating process registers each segment; the
registry unlinks them on `close`, at interpreter exit, and from SIGTERM/SIGINT (which
`cli.common.run_cli` turns into exceptions so `finally` blocks and atexit run).
"""

from __future__ import annotations

import atexit
import mmap
import os
import re
import secrets
import sys
from pathlib import Path

import numpy as np
import posix_ipc

PREFIX = "clever_"
SHM_DIR = Path("/dev/shm")
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)_[0-9a-f]+_")
_owned: dict[str, "SharedArray"] = {}


class SharedArray:
    """A NumPy array backed by a named POSIX shared-memory segment.

    Args:
        shape, dtype: the array's layout.
        tag: a short label that becomes part of the segment name.
        name: open an existing segment of that name instead of creating one (workers do this;
            only the creator unlinks).
    """

    def __init__(self, shape: tuple[int, ...], dtype=np.float32, tag: str = "arr", name: str | None = None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(self.shape)) * self.dtype.itemsize, 1)
        self.owner = name is None
        if self.owner:
            name = f"/{PREFIX}{os.getpid()}_{secrets.token_hex(4)}_{tag}"
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=nbytes)
            _owned[name] = self
        else:
            shm = posix_ipc.SharedMemory(name)
        self.name = name
        try:
            self._map = mmap.mmap(shm.fd, nbytes)
        finally:
            shm.close_fd()
        self.array = np.ndarray(self.shape, dtype=self.dtype, buffer=self._map)

    def close(self) -> None:
        """Release the mapping; the owner also unlinks the segment."""
        self.array = None  # type: ignore[assignment]
        try:
            self._map.close()
        except BufferError:
            pass  # a view is still alive somewhere; the segment is unlinked anyway
        if self.owner and _owned.pop(self.name, None) is not None:
            unlink_quietly(self.name)

    def __repr__(self) -> str:
        return f"SharedArray({self.name!r}, shape={self.shape}, dtype={self.dtype})"


def unlink_quietly(name: str) -> None:
    """Unlink a segment if it still exists."""
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


def close_all() -> None:
    """Unlink every segment this process created and still owns."""
    for array in list(_owned.values()):
        array.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_segments(verbose: bool = True) -> list[str]:
    """Unlink segments of ours whose creating process no longer exists; return their names."""
    removed = []
    if not SHM_DIR.is_dir():
        return removed
    for entry in SHM_DIR.iterdir():
        match = _NAME_RE.match(entry.name)
        if match and not _pid_alive(int(match.group(1))):
            unlink_quietly("/" + entry.name)
            removed.append(entry.name)
    if removed and verbose:
        print(f"[WARNING] removed {len(removed)} stale shared-memory segment(s) of a dead earlier run: "
              f"{', '.join(sorted(removed))}", file=sys.stderr)
    return removed


atexit.register(close_all)
