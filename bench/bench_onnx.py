#!/usr/bin/env python3
"""ONNX models: conversion time, and the converted MNIST CNN's collection speed against the native Keras one.

- conversion: the shipped MNIST CNN written as an NCHW ONNX graph (tests/onnx_graphs.py), loaded
  with an empty cache (import of the converter, conversion, onnxruntime check, SavedModel write
  and load), then again from the cache.
- throughput: gradients/s of the real collection (EstimateLipschitz.estimate_targets, one target,
  Nsamps points per iteration) as the marginal cost of k more iterations, for the Keras model and
  the converted one, alternating in one process; the ratio onnx / keras is taken per round and the
  median reported, so that the machine's changing load cancels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402


def marginal_grads_per_s(est, x0, nsamps: int, k: int) -> tuple[float, float]:
    """nsamps / ((time of 2k iterations - time of k) / k), per wall second and per CPU second of
    this process: the per-iteration cost without start-up. CPU time leaves out the waits for
    cores that other jobs hold, which dominate wall time on this shared machine."""
    run = lambda n: est.estimate_targets(x0, 0, [1], nsamps, n, "l2")
    clocks = (time.perf_counter, time.process_time)
    begin = [c() for c in clocks]
    run(k)
    t_k = [c() - b for c, b in zip(clocks, begin)]
    begin = [c() for c in clocks]
    run(2 * k)
    return tuple(nsamps * k / (c() - b - t) for c, b, t in zip(clocks, begin, t_k))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nsamps", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=3, help="k in time(2k) - time(k)")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two models")
    parser.add_argument("--json", default="bench/results/bench_onnx.json")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from onnx_graphs import keras_cnn_as_onnx

    from cleverscore.models.onnx_convert import load_onnx_model
    from cleverscore.models.zoo import load_zoo_model
    from cleverscore.sampling.estimator import EstimateLipschitz

    keras_model = load_zoo_model("mnist", "normal")
    proto = keras_cnn_as_onnx(keras_model)
    with tempfile.TemporaryDirectory() as cache:
        begin = time.perf_counter()
        converted = load_onnx_model(proto, cache_dir=cache)
        first = time.perf_counter() - begin
        begin = time.perf_counter()
        cached = load_onnx_model(proto, cache_dir=cache)
        second = time.perf_counter() - begin
    assert converted.converted_now and not cached.converted_now
    x0 = np.random.default_rng(1).uniform(-0.3, 0.3, (28, 28, 1)).astype(np.float32)
    estimators = {}
    for name, model in (("keras", keras_model), ("onnx", cached)):
        estimators[name] = EstimateLipschitz(log=None)
        estimators[name].load_model(model=model, batch_size=args.nsamps)
        estimators[name].estimate_targets(x0, 0, [1], args.nsamps, 1, "l2")  # trace once
    rounds = []
    for r in range(args.rounds):
        order = ("keras", "onnx") if r % 2 == 0 else ("onnx", "keras")  # neither always goes first
        speed = {name: marginal_grads_per_s(estimators[name], x0, args.nsamps, args.iters) for name in order}
        rounds.append({"keras": speed["keras"][0], "onnx": speed["onnx"][0], "ratio": speed["onnx"][0] / speed["keras"][0],
                       "keras_cpu": speed["keras"][1], "onnx_cpu": speed["onnx"][1],
                       "ratio_cpu": speed["onnx"][1] / speed["keras"][1]})
        print(f"round {r}: keras {speed['keras'][0]:.0f} grads/s, onnx {speed['onnx'][0]:.0f} grads/s, "
              f"ratio {rounds[-1]['ratio']:.3f}; per CPU second: keras {speed['keras'][1]:.0f}, "
              f"onnx {speed['onnx'][1]:.0f}, ratio {rounds[-1]['ratio_cpu']:.3f}", flush=True)
    result = {"convert_first_load_s": first, "cached_load_s": second,
              "keras_grads_per_s": statistics.median(r["keras"] for r in rounds),
              "onnx_grads_per_s": statistics.median(r["onnx"] for r in rounds),
              "ratio_median": statistics.median(r["ratio"] for r in rounds),
              "ratio_cpu_median": statistics.median(r["ratio_cpu"] for r in rounds), "rounds": rounds,
              "nsamps": args.nsamps, "iters": args.iters}
    print(f"first load (import converter, convert, check, save, load) {first:.2f} s; cached load {second:.2f} s")
    print(f"median ratio onnx / keras: {result['ratio_median']:.3f} over {args.rounds} rounds "
          f"(keras {result['keras_grads_per_s']:.0f}, onnx {result['onnx_grads_per_s']:.0f} grads/s); "
          f"per CPU second {result['ratio_cpu_median']:.3f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
