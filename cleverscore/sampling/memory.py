"""Does one batch fit in memory? Measured on the traced graph of the actual compiled step.

Before the first call of a compiled step, its graph (traced once; the call reuses the trace) is
walked in execution order: every tensor is alive from the op that makes it to its last
consumer, nested loop and branch bodies add their own peak while they run, and the largest sum
of live tensor sizes is the step's memory need. Tensors that alias others (Identity, Reshape),
constants and variables are left out. Dynamic leading dimensions (the samples still running in
a power iteration) count as the whole batch, so the figure is an upper bound of the tensors
the step holds at once. It is compared with the memory available: on CPU the smaller of
/proc/meminfo's MemAvailable and the cgroup's free memory; on GPU the device's memory minus
what TensorFlow already holds.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from cleverscore.errors import UsageError

# Ops whose outputs share their input's buffer or hold no per-call allocation.
NO_ALLOCATION = frozenset({"Identity", "IdentityN", "Reshape", "StopGradient", "Const", "Placeholder",
                           "ReadVariableOp", "VarHandleOp", "NoOp", "Shape", "Squeeze", "ExpandDims"})
FUNCTION_ATTRS = ("body", "cond", "then_branch", "else_branch", "f")
CALLING_OPS = frozenset({"While", "StatelessWhile", "If", "StatelessIf", "PartitionedCall", "StatefulPartitionedCall"})
# The measured peak (resident memory growth) was up to 1.22x the graph's live-tensor peak on the
# MNIST CNN (allocator slack and runtime buffers); 1.25 covers that.
HEADROOM = 1.25
# AutoGraph turns `for b in tf.range(n)` into a while loop that runs up to 10 independent
# iterations (batches) at once; the error's suggested batch size assumes that many.
LOOP_PARALLEL = 10


def _tensor_bytes(tensor, batch: int) -> int:
    shape = tensor.shape
    if shape.rank is None:
        return 0
    dims = shape.as_list()
    if dims and dims[0] is None:
        dims[0] = batch  # a dynamic subset of the batch: at most the batch
    if any(d is None for d in dims):
        return 0
    try:
        size = tensor.dtype.size
    except (TypeError, ValueError, AttributeError):  # resource and variant handles
        return 0
    count = 1
    for d in dims:
        count *= d
    return count * size


def _nested_graphs(op) -> list:
    if op.type not in CALLING_OPS:
        return []
    graphs = []
    for attr in FUNCTION_ATTRS:
        try:
            name = op.get_attr(attr).name
        except (ValueError, AttributeError):
            continue
        fn = op.graph._get_function(name)  # noqa: SLF001 - the only way to reach a While/If body graph
        if fn is not None and hasattr(fn, "graph"):
            graphs.append(fn.graph)
    return graphs


def graph_peak_bytes(graph, batch: int, loop_trips: int = 1) -> int:
    """Largest total size of tensors alive at once when `graph` runs its ops in order.

    A top-level loop of `loop_trips` iterations may run up to its `parallel_iterations` of them
    at once (the batches of one step do not depend on each other), so its body counts that often.
    """
    ops = graph.get_operations()
    last_use: dict[str, int] = {}
    for i, op in enumerate(ops):
        for t in op.inputs:
            last_use[t.name] = i
    frees: dict[int, int] = defaultdict(int)
    live = peak = 0
    for i, op in enumerate(ops):
        nested = max((graph_peak_bytes(g, batch) for g in _nested_graphs(op)), default=0)
        if op.type in ("While", "StatelessWhile"):
            nested *= max(1, min(loop_trips, op.get_attr("parallel_iterations")))
        peak = max(peak, live + nested)
        if op.type not in NO_ALLOCATION:
            for t in op.outputs:
                size = _tensor_bytes(t, batch)
                live += size
                frees[last_use.get(t.name, i)] += size
        peak = max(peak, live)
        live -= frees.pop(i, 0)
    return peak


def _cgroup_free_bytes() -> int | None:
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes(device: str = "CPU") -> int | None:
    """Memory a new batch can use on `device` ('CPU' or 'GPU'), or None if unknown."""
    if device == "GPU":
        return _gpu_free_bytes()
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.strip()}
    except (OSError, ValueError, IndexError):
        return None
    free = [v for v in (info.get("MemAvailable"), _cgroup_free_bytes()) if v is not None]
    return min(free) if free else None


def _gpu_free_bytes() -> int | None:
    import subprocess

    import tensorflow as tf

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10).stdout
        total = int(out.split()[0]) * 2**20
        used = tf.config.experimental.get_memory_info("GPU:0")["current"]
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None
    return int(total * 0.9) - used  # TensorFlow's allocator reserves about 10% for itself


def human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1000
    return f"{nbytes:.3g} TB"


def check_batch_fits(peak: int, batch: int, nbatches: int, fixed: int = 0, device: str = "CPU") -> None:
    """Refuse a step whose graph holds `peak` bytes at once for batches of `batch` points.

    `fixed` bytes do not depend on the batch size (the pool's sample buffers). The error names
    a batch size that fits, assuming that its loop then runs LOOP_PARALLEL batches at once.
    """
    free = available_bytes(device)
    need = int(HEADROOM * peak) + fixed
    if free is None or need <= free:
        return
    per_point = HEADROOM * peak / (batch * max(1, min(LOOP_PARALLEL, nbatches)))
    fits = int((free - fixed) / per_point) // LOOP_PARALLEL
    hint = (f"use `batch_size` {fits} or less" if fits >= 1 else
            "the samples alone do not fit: lower `nsamps`" if fixed >= free else "lower `batch_size`")
    raise UsageError(f"a batch of {batch} points needs about {human(need)} of memory, but {human(free)} "
                     f"are available on {device}; {hint}")
