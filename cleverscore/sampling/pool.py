"""A pool of worker processes that draws the next iteration's samples while the model runs.

The main process owns two shared-memory buffers of one iteration each (Nsamps points); while
the model consumes one, the workers fill the other. Samples are drawn in fixed chunks, each
seeded by (seed, image id, iteration, chunk offset), so the result does not depend on the
number of workers. Workers open the segments by name and never unlink them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator

import numpy as np

from cleverscore.errors import CleverError
from cleverscore.norms import LpNorm
from cleverscore.sampling.balls import numpy_norms, numpy_perturbations
from cleverscore.sampling.shared_memory import SharedArray

CHUNK = 256  # samples per task: small enough to balance workers, large enough to amortise IPC


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group; only the parent decides how a run ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["OMP_NUM_THREADS"] = "1"


def _fill_chunk(task: tuple) -> float:
    """Write one chunk of samples; return the largest ||delta|| among them (before clipping)."""
    (x0_name, buf_name, shape, offset, count, norm, scale, seed_key, clip, transform) = task
    x0 = SharedArray(shape[1:], name=x0_name)
    buf = SharedArray(shape, name=buf_name)
    try:
        rng = np.random.default_rng(seed_key)
        dim = int(np.prod(shape[1:]))
        flat = numpy_perturbations(rng, norm, count, dim, scale)
        delta = flat.reshape((count,) + tuple(shape[1:]))
        points = np.clip(x0.array[np.newaxis] + delta, clip[0], clip[1])
        if transform is not None:
            points = apply_transform(transform, points, clip)
        buf.array[offset : offset + count] = points
        return float(numpy_norms(flat, norm).max())
    finally:
        x0.close()
        buf.close()


def apply_transform(name: str, points: np.ndarray, clip: tuple[float, float]) -> np.ndarray:
    """Apply a named input transformation (defense.py) to points in the model's input range."""
    from cleverscore.sampling import transforms as defense

    fn: Callable[[np.ndarray], np.ndarray] = defense.get_transform(name)
    unit = (points - clip[0]) / (clip[1] - clip[0])
    return (fn(unit) * (clip[1] - clip[0]) + clip[0]).astype(np.float32)


@contextlib.contextmanager
def _main_module_hidden():
    """Start workers without re-running the caller's script.

    Spawned workers re-import `__main__` from its path, which re-runs a user's script that lacks
    an `if __name__ == "__main__":` guard. The workers only need this module, so the path is
    hidden while they start.
    """
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    try:
        if "__file__" in saved:
            del main.__file__
        if "__spec__" in saved:
            main.__spec__ = None
        yield
    finally:
        for key, value in saved.items():
            setattr(main, key, value)


class SamplePool:
    """Worker processes drawing clipped (and optionally transformed) samples into shared memory.

    Args:
        nthreads: number of worker processes (0 = half the cores, at least 1).
    """

    def __init__(self, nthreads: int = 0):
        self.nthreads = nthreads or max((os.cpu_count() or 2) // 2, 1)
        ctx = multiprocessing.get_context("spawn")  # never fork a process that has TensorFlow loaded
        with _main_module_hidden():
            self._pool = ctx.Pool(self.nthreads, initializer=_init_worker)

    def iterations(
        self,
        x0: np.ndarray,
        nsamp: int,
        niters: int,
        norm: LpNorm,
        scale: tuple[float, float],
        seed_key: tuple[int, ...],
        clip: tuple[float, float] = (-0.5, 0.5),
        transform: str | None = None,
    ) -> Iterator[tuple[np.ndarray, float]]:
        """Yield each iteration's (nsamp, *x0.shape) samples and their largest ||delta|| (unclipped).

        The next iteration is drawn meanwhile; a yielded array is valid until the next one is requested.
        """
        shape = (nsamp,) + tuple(x0.shape)
        x0_shm = SharedArray(x0.shape, tag="x0")
        buffers = [SharedArray(shape, tag=f"buf{k}") for k in (0, 1)]
        pending = None
        try:
            x0_shm.array[...] = x0
            pending = self._submit(x0_shm, buffers[0], shape, norm, scale, (*seed_key, 0), clip, transform)
            for it in range(niters):
                radius = self._wait(pending)
                pending = None
                if it + 1 < niters:
                    pending = self._submit(
                        x0_shm, buffers[(it + 1) % 2], shape, norm, scale, (*seed_key, it + 1), clip, transform
                    )
                yield buffers[it % 2].array, radius
        finally:
            if pending is not None:
                try:
                    pending.wait()
                except Exception:  # noqa: BLE001 - the buffers are released below either way
                    pass
            for shm in (x0_shm, *buffers):
                shm.close()

    def _submit(self, x0_shm, buf, shape, norm, scale, key, clip, transform):
        tasks = [
            (x0_shm.name, buf.name, shape, off, min(CHUNK, shape[0] - off), norm, scale, (*key, off), clip, transform)
            for off in range(0, shape[0], CHUNK)
        ]
        return self._pool.map_async(_fill_chunk, tasks)

    @staticmethod
    def _wait(result) -> float:
        try:
            return max(result.get())
        except Exception as err:  # a worker's exception, re-raised here with its message
            raise CleverError(f"sample worker failed: {type(err).__name__}: {err}") from err

    def close(self) -> None:
        """Stop the workers."""
        self._pool.terminate()
        self._pool.join()

    def __enter__(self) -> "SamplePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
