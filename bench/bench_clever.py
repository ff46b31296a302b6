#!/usr/bin/env python3
"""How close CLEVER's collection runs to the hardware limit, measured in one run.

For each built-in MNIST/CIFAR model:
- limit: gradients/s of one compiled forward+backward with the three norms and a max, on
  pre-made inputs (batch 1024): the unavoidable work. Models without trained weights are
  measured with random weights of the same architecture (the cost is the same).
- pipeline: gradients/s of the real collection (EstimateLipschitz.estimate_targets, what
  collect_gradients.py calls), as the marginal cost of k more iterations: time(2k) - time(k),
  so tracing and start-up do not count.
- untargeted: the 9-target shared-sample collection's marginal time over 9 x the targeted one's.
- fit: clever.py's fit of one file (three norms, seven starts each) on a process pool.
Each number is the median of --repeats runs; within a run the limit and the pipeline are
measured back to back and their ratio taken. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

MODELS = [("mnist", "normal"), ("mnist", "distilled"), ("mnist", "brelu"), ("mnist", "2-layer"),
          ("cifar", "normal"), ("cifar", "distilled"), ("cifar", "brelu"), ("cifar", "2-layer")]


def load(dataset: str, name: str):
    """The zoo model with its weights, or random weights of the same architecture (noted)."""
    from cleverscore.models.zoo import build_model, load_zoo_model, parse_model_name, weights_path

    spec = parse_model_name(dataset, name)
    if weights_path(spec).is_file():
        return load_zoo_model(dataset, name), "trained"
    return build_model(spec), "random"


def make_limit_step(model, shape, batch: int):
    """The unavoidable work: forward, backward and the three norms of one batch of pre-made inputs."""
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).uniform(-0.5, 0.5, (batch, *shape)).astype(np.float32))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = model(x, training=False)
            g = logits[:, 0] - logits[:, 1]
        a = tf.abs(tf.reshape(tape.gradient(g, x), [batch, -1]))
        return tf.reduce_max(tf.stack([tf.sqrt(tf.reduce_sum(a * a, 1)), tf.reduce_sum(a, 1), tf.reduce_max(a, 1)]), 1)

    step(x).numpy()
    return lambda: step(x).numpy()


def seconds_per_call(fn, calls: int) -> float:
    begin = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - begin) / calls


def marginal_seconds(run, k: int) -> float:
    """(time for 2k iterations - time for k) / k: the per-iteration cost without start-up."""
    begin = time.perf_counter()
    run(k)
    t_k = time.perf_counter() - begin
    begin = time.perf_counter()
    run(2 * k)
    return (time.perf_counter() - begin - t_k) / k


def bench_model(dataset: str, name: str, args) -> dict:
    """Each repeat measures the limit and the pipeline back to back, so slow drifts of the
    machine's speed (other load, clocks under sustained load) cancel in the per-repeat ratios."""
    from cleverscore.sampling.estimator import EstimateLipschitz

    model, weights = load(dataset, name)
    shape = tuple(model.input_shape[1:])
    x0 = np.random.default_rng(1).uniform(-0.3, 0.3, shape).astype(np.float32)
    limit = make_limit_step(model, shape, args.nsamps)
    est = EstimateLipschitz(log=None, sampler=args.sampler, nthreads=args.nthreads)
    est.load_model(model=model, batch_size=args.nsamps)
    one = lambda n: est.estimate_targets(x0, 0, [1], args.nsamps, n, "l2")
    nine = lambda n: est.estimate_targets(x0, 0, list(range(1, 10)), args.nsamps, n, "l2")
    one(1)
    if not args.skip_untargeted:
        nine(1)
    rows = []
    for _ in range(args.repeats):
        t_limit = seconds_per_call(limit, args.calls)
        t_one = marginal_seconds(one, args.iters)
        rep = {"limit": args.nsamps / t_limit, "pipeline": args.nsamps / t_one, "ratio": t_limit / t_one}
        if not args.skip_untargeted:
            rep["untargeted_ratio"] = marginal_seconds(nine, max(args.iters // 2, 1)) / (9 * t_one)
        rows.append(rep)
    est.close()
    med = lambda key: statistics.median(r[key] for r in rows)
    result = {"dataset": dataset, "model": name, "weights": weights, "limit_grads_per_s": med("limit"),
              "pipeline_grads_per_s": med("pipeline"), "ratio": med("ratio"), "repeats": rows}
    if not args.skip_untargeted:
        result["untargeted_ratio"] = med("untargeted_ratio")
    return result


def bench_fit(args) -> float:
    from scipy.stats import weibull_min

    from cleverscore.scoring.fit import C_INIT, fit_many

    rng = np.random.default_rng(2)
    files = [[-weibull_min.rvs(4.0, loc=-(5 + k), scale=1.0, size=500, random_state=rng) for k in range(3)]
             for _ in range(args.fit_files)]
    with ProcessPoolExecutor(len(C_INIT) + 1) as pool:
        fit_many(files[0], executor=pool)
        times = []
        for _ in range(args.repeats):
            begin = time.perf_counter()
            for maxima in files:
                fit_many(maxima, executor=pool)
            times.append((time.perf_counter() - begin) / len(files))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all", help="comma-separated dataset:model list, or all")
    parser.add_argument("--nsamps", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=4, help="k in time(2k) - time(k)")
    parser.add_argument("--calls", type=int, default=4, help="calls per limit measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sampler", choices=["graph", "pool"], default="graph")
    parser.add_argument("--nthreads", type=int, default=0)
    parser.add_argument("--fit_files", type=int, default=5)
    parser.add_argument("--skip_untargeted", action="store_true")
    parser.add_argument("--json", default="bench/results/bench.json")
    args = parser.parse_args()
    chosen = MODELS if args.models == "all" else [tuple(m.split(":")) for m in args.models.split(",")]
    rows = []
    print("| model | weights | limit grads/s | pipeline grads/s | ratio | untargeted / 9 targeted |")
    print("|---|---|---|---|---|---|")
    for dataset, name in chosen:
        row = bench_model(dataset, name, args)
        rows.append(row)
        print(f"| {dataset} {name} | {row['weights']} | {row['limit_grads_per_s']:,.0f} | "
              f"{row['pipeline_grads_per_s']:,.0f} | {row['ratio']:.3f} | {row.get('untargeted_ratio', float('nan')):.3f} |",
              flush=True)
    fit_s = bench_fit(args)
    print(f"clever.py fit: {fit_s:.3f} s per file (three norms, seven starts, {os.cpu_count()} cores)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "fit_seconds_per_file": fit_s, "sampler": args.sampler,
                               "nsamps": args.nsamps, "repeats": args.repeats, "cpus": os.cpu_count()}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
