#!/usr/bin/env python3
"""What running collect_gradients.py's work items on Ray costs, on this machine.

- round trip: the median time of an empty call to a warm worker and its reply.
- overhead: per work item, the median wall time of a small item sent to a warm Ray worker and
  its result fetched, minus the median time of the same item computed in-process (both after
  tracing). This is the cost Ray adds per item: serialising the item and the maxima, scheduling
  the call, and the driver's wait loop.
- throughput: gradients/s of --items items (one target each) in-process, then on Ray with 1 and
  2 workers (after each worker's first, tracing, item).
- start-up: seconds from the executor's first item to its workers being ready (Ray instance
  already running; the workers import TensorFlow, load the model and trace on that item).
- driver: the driver's serial work per item at the paper's settings (3 targets, -i 500):
  printing the 1500 [STATS] lines and writing 3 .mat files atomically. It bounds how many items
  per second one driver can take in, whatever the number of workers.
Ray runs as a local instance on 127.0.0.1. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local instance on the loopback interface


ROUND_TRIPS: list[float] = []  # seconds of an empty call to a warm worker
STARTUP: dict[int, float] = {}  # workers -> seconds to start them and run their first (tracing) item


def run_args(model: str, nsamps: int, niters: int):
    from cleverscore.cli.collect import build_parser, settings_from_args, validate

    dataset, name = model.split(":")
    args = build_parser().parse_args(["-d", dataset, "-m", name, "-N", str(nsamps), "-i", str(niters), "--quiet",
                                      "--ray", "auto", "-s", tempfile.gettempdir()])  # checked, never written
    validate(args)
    return settings_from_args(args)


def make_items(args, count: int, first: int = 0) -> list:
    """`count` work items: test images with the target (true label + 1) mod 10; nothing is saved."""
    from cleverscore.running.loading import load_inputs
    from cleverscore.running.plan import WorkItem

    x, y = load_inputs(args)
    return [WorkItem(i, i, int(y[i]), x[i], [((int(y[i]) + 1) % 10, "bench", Path("unused.mat"))])
            for i in range(first, first + count)]


def in_process(args, items: list) -> list[float]:
    """Seconds per item, computed in this process after a tracing run."""
    from cleverscore.running.execute import compute_item
    from cleverscore.running.loading import load_classifier
    from cleverscore.sampling.estimator import EstimateLipschitz

    estimator = EstimateLipschitz(seed=args.sampling.seed, log=None)
    load_classifier(args, estimator)
    compute_item(estimator, args.sampling, items[0])  # traces the step
    times = []
    for item in items:
        begin = time.perf_counter()
        compute_item(estimator, args.sampling, item)
        times.append(time.perf_counter() - begin)
    return times


def on_ray(args, items: list, workers: int, one_at_a_time: bool) -> list[float]:
    """Seconds per item (one_at_a_time) or for all items together, on `workers` warm Ray workers."""
    from cleverscore.running.cluster import RayExecutor

    executor = RayExecutor(dataclasses.replace(args, ray_workers=workers))
    try:
        begin = time.perf_counter()
        list(executor.run(items[:workers]))  # each worker traces the step on its first item
        STARTUP[workers] = time.perf_counter() - begin
        if one_at_a_time:
            for _ in range(50):  # a bare call and reply: Ray's own share of the per-item cost
                begin = time.perf_counter()
                executor.ray.get(executor.actors[0].pid.remote())
                ROUND_TRIPS.append(time.perf_counter() - begin)
            times = []
            for item in items:
                begin = time.perf_counter()
                list(executor.run([item]))
                times.append(time.perf_counter() - begin)
            return times
        begin = time.perf_counter()
        list(executor.run(items))
        return [time.perf_counter() - begin]
    finally:
        executor.close()


def driver_cost(repeats: int = 10) -> float:
    """Median seconds of save_outcome for a 3-target item of 500 iterations (random maxima)."""
    import contextlib

    import numpy as np

    from cleverscore.running.execute import ItemOutcome
    from cleverscore.running.plan import WorkItem
    from cleverscore.running.saving import save_outcome
    from cleverscore.sampling.estimator import EstimateLipschitz, TargetResult

    args = run_args("mnist:normal", 1024, 500)
    rng = np.random.default_rng(0)
    estimator = EstimateLipschitz(log=print)
    times = []
    with tempfile.TemporaryDirectory() as folder, open(os.devnull, "w") as sink:
        for r in range(repeats):
            todo = [(t, "bench", Path(folder) / f"{r}_{t}.mat") for t in (1, 2, 3)]
            results = [TargetResult(t, rng.random((500, 3), np.float32), np.zeros((500, 3), np.float32), 1.0,
                                    rng.random(10, np.float32), rng.random(500)) for t in (1, 2, 3)]
            outcome = ItemOutcome(WorkItem(r, r, 0, np.zeros((28, 28, 1), np.float32), todo), results)
            counters = {"total": 0, "start": time.time(), "failed": []}
            begin = time.perf_counter()
            with contextlib.redirect_stdout(sink):
                save_outcome(args, estimator, outcome, counters)
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mnist:normal", help="dataset:model of the throughput runs")
    p.add_argument("-N", type=int, default=1024, help="samples per iteration (throughput runs)")
    p.add_argument("-i", type=int, default=10, help="iterations per item (throughput runs)")
    p.add_argument("--items", type=int, default=6, help="items per throughput run")
    p.add_argument("--overhead_items", type=int, default=20, help="small items (-N 64 -i 5) timed for the overhead")
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "ray.json"))
    opts = p.parse_args()
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=128 * 2**20, log_to_driver=False)
    try:
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
        small = run_args(opts.model, 64, 5)
        small_items = make_items(small, opts.overhead_items)
        local_small = statistics.median(in_process(small, small_items))
        ray_small = statistics.median(on_ray(small, small_items, 1, one_at_a_time=True))
        big = run_args(opts.model, opts.N, opts.i)
        items = make_items(big, opts.items)
        grads = opts.items * opts.N * opts.i
        rates = {"in-process": grads / sum(in_process(big, items))}
        for workers in (1, 2):
            rates[f"ray, {workers} worker(s)"] = grads / on_ray(big, items, workers, one_at_a_time=False)[0]
    finally:
        ray.shutdown()
    driver_s = driver_cost()
    result = {"model": opts.model, "overhead_item": "-N 64 -i 5, 1 target", "in_process_item_s": local_small,
              "ray_item_s": ray_small, "overhead_s": ray_small - local_small,
              "empty_call_round_trip_s": statistics.median(ROUND_TRIPS),
              "throughput_settings": f"-N {opts.N} -i {opts.i}, {opts.items} items of 1 target",
              "gradients_per_s": rates, "startup_and_first_item_s": STARTUP,
              "driver_s_per_item_3_targets_500_iterations": driver_s, "load_average": os.getloadavg()}
    print(f"per-item overhead ({result['overhead_item']}): Ray {ray_small * 1e3:.1f} ms - in-process "
          f"{local_small * 1e3:.1f} ms = {result['overhead_s'] * 1e3:.1f} ms")
    print(f"empty call to a warm worker and back: {result['empty_call_round_trip_s'] * 1e3:.2f} ms (median of 50)")
    for name, rate in rates.items():
        print(f"{opts.model} {result['throughput_settings']}: {name:20s} {rate:9,.0f} gradients/s")
    print(f"start-up and first item, by workers: {', '.join(f'{w}: {t:.1f} s' for w, t in STARTUP.items())}")
    print(f"driver per item (3 targets, -i 500: print and save): {driver_s * 1e3:.1f} ms")
    print(f"load average during the run: {result['load_average']}")
    Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
