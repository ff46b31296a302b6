"""The original's module name for NumPy arrays in POSIX shared memory.

The implementation lives in `cleverscore.sampling.shared_memory`.
"""

from cleverscore.sampling.shared_memory import SharedArray, close_all, remove_stale_segments

__all__ = ["SharedArray", "close_all", "remove_stale_segments"]
