"""Shared-memory segments never outlive a run: normal exit, SIGINT, SIGTERM, or a killed earlier run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, interrupt, our_segments, run_script
from cleverscore.sampling.shared_memory import SharedArray, remove_stale_segments


def test_owner_unlinks_and_workers_only_attach():
    owner = SharedArray((4, 3), tag="t")
    owner.array[...] = 7
    reader = SharedArray((4, 3), name=owner.name)
    assert np.all(reader.array == 7)
    reader.close()
    assert owner.name.lstrip("/") in our_segments(os.getpid())
    owner.close()
    assert owner.name.lstrip("/") not in our_segments(os.getpid())


def test_stale_segment_of_a_dead_run_is_removed():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    import posix_ipc

    name = f"/clever_{pid}_deadbeef_buf0"
    posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=64).close_fd()
    removed = remove_stale_segments(verbose=False)
    assert name.lstrip("/") in removed
    assert not our_segments(pid)


def test_pool_run_to_completion_leaves_nothing(tmp_path):
    res = run_script("collect_gradients.py", "-n", "1", "-N", "64", "-i", "3", "--target_type", "1",
                     "--sampler", "pool", "--nthreads", "1", "-s", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert len(list(tmp_path.rglob("*.mat"))) == 1
    assert not our_segments()


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM],
                         ids=["SIGINT", "SIGTERM"])  # SIGINT: 22 s, CI time budget
def test_signal_mid_run_leaves_no_segment_and_no_partial_file(tmp_path, sig):
    proc = subprocess.Popen(
        [sys.executable, "collect_gradients.py", "-n", "3", "-N", "2048", "-i", "500", "--sampler", "pool",
         "--nthreads", "1", "-s", str(tmp_path)],
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not our_segments(proc.pid) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert our_segments(proc.pid), "the run never created its sample buffers"
        err = interrupt(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert not our_segments(proc.pid)
    assert not list(tmp_path.rglob("*.mat")) and not list(tmp_path.rglob("*.tmp"))
    assert "Traceback" not in err
