"""The `.mat` result files: their names, atomic writing, and reading them back."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import scipy.io as sio


@dataclass(frozen=True)
class MatName:
    """The fields encoded in `<Nsamps>_<Niters>_<id>_<true>_<target>_<info>_<activation>_order<k>.mat`."""

    nsamps: int
    niters: int
    id: int
    true_label: int
    target_label: int
    info: str
    activation: str = "relu"
    order: int = 1

    @property
    def filename(self) -> str:
        return (f"{self.nsamps}_{self.niters}_{self.id}_{self.true_label}_{self.target_label}_{self.info}_"
                f"{self.activation}_order{self.order}.mat")


def parse_mat_name(path: str | os.PathLike) -> MatName:
    """Fields of a result file's name; ValueError if it does not follow the pattern."""
    stem = Path(path).name.removesuffix(".mat")
    parts = stem.split("_")
    if len(parts) < 6:
        raise ValueError(f"file name {Path(path).name} does not follow <Nsamps>_<Niters>_<id>_<true>_<target>_<info>...")
    nsamps, niters, image_id, true_label, target = (int(p) for p in parts[:5])
    activation = parts[6] if len(parts) > 6 else "relu"
    order = int(parts[7].removeprefix("order")) if len(parts) > 7 and parts[7].startswith("order") else 1
    return MatName(nsamps, niters, image_id, true_label, target, parts[5], activation, order)


def result_folder(save: str | os.PathLike, dataset: str, model_name: str) -> Path:
    """`<save>/<dataset>_<model_name>`, as the original."""
    return Path(save) / f"{dataset}_{model_name}"


def check_writable_folder(folder: str | os.PathLike, flag: str = "-s/--save") -> None:
    """Refuse (UsageError) a results folder that is a file, lies under a file, or cannot be written.

    Nothing is left behind: the probe is an empty folder made in the deepest existing parent and
    removed at once, so the check is the real operation rather than a permission guess (root
    passes every permission check, yet cannot write under /sys or on a read-only mount).
    """
    from cleverscore.errors import UsageError

    folder = Path(folder)
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag}: {existing} is a file, not a folder (results go to {folder})")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".clever_probe."))
    except OSError as err:
        raise UsageError(f"{flag}: cannot create or write the results folder {folder} "
                         f"({existing}: {err.strerror})") from None


def check_writable_file(path: str | os.PathLike, flag: str) -> None:
    """Refuse (UsageError) an output file that is a folder, lies under a file, or cannot be written.

    Checked before any work, so that a run never ends in a traceback after its results were
    computed. Nothing is created: an existing file is opened for appending (its contents stay),
    and a new file's folder is probed as `check_writable_folder` does.
    """
    from cleverscore.errors import UsageError

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag}: {path} is a folder, not a file")
    if path.exists():
        try:
            open(path, "ab").close()
        except OSError as err:
            raise UsageError(f"{flag}: cannot write {path} ({err.strerror})") from None
        return
    check_writable_folder(path.parent, flag)


# Errors of a write that ran out of room or lost its device: reported in one line, never a traceback.
WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS}


def is_write_failure(err: BaseException) -> bool:
    """True for an OSError of a disk that is full, over quota, read-only or failing."""
    return isinstance(err, OSError) and err.errno in WRITE_FAILURES


@contextlib.contextmanager
def write_failures_reported(what: str):
    """Turn a full disk (or a failing one) while writing `what` into one CleverError line."""
    from cleverscore.errors import CleverError

    try:
        yield
    except OSError as err:
        if not is_write_failure(err):
            raise
        raise CleverError(f"cannot write {what}: {err.strerror}; nothing partial was left") from None


def save_mat_atomically(path: Path, contents: dict) -> None:
    """Write a .mat under a temporary name in the same folder, then rename it into place.

    Readers (and a rerun deciding what to skip) never see a partial file, and two runs writing
    into one folder each rename whole files.
    """
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            sio.savemat(f, contents)
            f.flush()
            os.fsync(f.fileno())

    write_atomically(path, write)


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(temporary path)` in the target's folder, then rename the file into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temporary files of runs that died mid-write (their pid is gone); keep live runs' files."""
    removed = []
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(".*.tmp"):
        parts = tmp.name.split(".")
        pid = next((int(p) for p in reversed(parts[:-2]) if p.isdigit()), None)
        if pid is None:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        except PermissionError:
            pass
    return removed


def load_mat(path: str | os.PathLike) -> dict:
    """Read a result file with scipy (no pickles, no code)."""
    return sio.loadmat(str(path))


MODEL_ID_KEY = "model_id"  # the model's content hash (models/identity.py); older files lack it


def mat_text(value) -> str:
    """A string saved by scipy.io.savemat ('' comes back as an empty array)."""
    import numpy as np

    array = np.asarray(value)
    return str(array.ravel()[0]).strip() if array.size else ""


def recorded_model_id(mat: dict) -> str | None:
    """The `model_id` a loaded result file records, or None for files written before it existed."""
    return (mat_text(mat[MODEL_ID_KEY]) or None) if MODEL_ID_KEY in mat else None


def recorded_model_path(mat: dict) -> str:
    """The `--model_path` in a loaded result file's `args` ('' for a built-in model or no args)."""
    args = mat.get("args")
    if args is None or getattr(args, "dtype", None) is None or not args.dtype.names or "model_path" not in args.dtype.names:
        return ""
    return mat_text(args["model_path"][0, 0])


def result_status(path: Path, model_id: str | None = None, keys: tuple[str, ...] = ("G2_max", "g_x0")) -> str:
    """'missing', 'incomplete', 'complete', or 'other model' for a result file.

    'other model': the file is complete but records a `model_id` other than `model_id` (given).
    Files without the key (older versions) count as the model's own: nothing tells otherwise."""
    if not path.is_file():
        return "missing"
    try:
        mat = load_mat(path)
    except Exception:  # noqa: BLE001 - any unreadable file counts as incomplete
        return "incomplete"
    return mat_status(mat, model_id, keys)


def mat_status(mat: dict, model_id: str | None = None, keys: tuple[str, ...] = ("G2_max", "g_x0")) -> str:
    """`result_status` of a result file already loaded: 'incomplete', 'complete' or 'other model'."""
    complete = all(k in mat for k in keys) if "H2_max" not in mat else "g_x0" in mat
    if not complete:
        return "incomplete"
    recorded = recorded_model_id(mat)
    return "other model" if model_id and recorded and recorded != model_id else "complete"


def is_complete(path: Path, keys: tuple[str, ...] = ("G2_max", "g_x0"), model_id: str | None = None) -> bool:
    """True if a result file exists, loads, has its essential keys and (given `model_id`) is that model's."""
    return result_status(path, model_id, keys) == "complete"
