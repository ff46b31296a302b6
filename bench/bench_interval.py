#!/usr/bin/env python3
"""How honest and how tight are the 95% intervals of the Lipschitz estimate?

    python3 bench/bench_interval.py synthetic --trials 200
    python3 bench/bench_interval.py seeds -m 2-layer --seeds 10 --splits 1024x500,256x2000,4096x125
    python3 bench/bench_interval.py speed --files 100

`speed`: CPU seconds per file (three norms of 500 maxima) of the seven-start fit and of the
three intervals, measured interleaved; their ratio is what the intervals add to clever.py's work.

`synthetic`: maxima s = 10 - Weibull(shape, scale 2) with a known end point 10; per (shape, n),
the coverage of the interval, how often it is unbounded above, and its median relative
half-width (bounded ones), plus the time per interval.

`seeds`: a real model. For each budget split NSAMPSxNITERS, `--seeds` independent collections of
the same (image, target); per seed the L2 Lipschitz estimate and its interval. Prints the
fraction of the other seeds' estimates that fall inside a seed's interval (about 0.83 for
calibrated 95% intervals, since the other estimate carries noise too), the median relative
half-width, the spread of the estimates across seeds, and how often the interval is unbounded.
For the first split it also reports the prefixes -i 100 and -i 200 of the same runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import weibull_min

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cleverscore.scoring.fit import fit_reverse_weibull  # noqa: E402
from cleverscore.scoring.intervals import end_point_interval  # noqa: E402

SHAPES = (2.5, 4.0, 8.0, 15.0, 30.0)
SIZES = (50, 100, 200, 500)


def synthetic(trials: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for shape in SHAPES:
        for n in SIZES:
            hits = unbounded = 0
            widths = []
            begin = time.perf_counter()
            for _ in range(trials):
                s = -weibull_min.rvs(shape, loc=-10.0, scale=2.0, size=n, random_state=rng)
                iv = end_point_interval(s)
                hits += iv.lo <= 10.0 <= iv.hi
                unbounded += not iv.bounded
                if iv.bounded:
                    widths.append((iv.hi - iv.lo) / 2 / 10.0)
            row = {"shape": shape, "n": n, "coverage": hits / trials, "unbounded": unbounded / trials,
                   "median_rel_half_width": float(np.median(widths)) if widths else None,
                   "ms_per_interval": 1000 * (time.perf_counter() - begin) / trials}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def collect(model: str, dataset: str, image: int, target_type: str, nsamps: int, niters: int, seed: int) -> tuple:
    """G2 maxima and g(x0) for one (image, target) collected with `seed`."""
    from cleverscore.data import load_dataset
    from cleverscore.running.targets import choose_targets
    from cleverscore.sampling.estimator import EstimateLipschitz

    data = load_dataset(dataset, None)
    x0 = data.test_data[image]
    true = int(np.argmax(data.test_labels[image]))
    est = EstimateLipschitz(seed=seed, log=None)
    est.load_model(dataset, model, batch_size=min(nsamps, 1024))
    pred = est.predict(x0[None])[0]
    mask = {"top2": 1, "least": 4}[target_type]
    target = choose_targets(pred, mask, seed, image, None)[0][0]
    res = est.estimate_targets(x0, true, [target], nsamps, niters)[0]
    est.close()
    return res.grad_max[:, 0].astype(np.float64), res.g_x0


def summarise_seeds(label: str, runs: list[np.ndarray]) -> dict:
    fits = [fit_reverse_weibull(m).estimate for m in runs]
    ivs = [end_point_interval(m) for m in runs]
    inside = [np.mean([ivs[a].lo <= fits[b] <= ivs[a].hi for b in range(len(runs)) if b != a]) for a in range(len(runs))]
    widths = [(iv.hi - iv.lo) / 2 / f for iv, f in zip(ivs, fits) if iv.bounded]
    row = {"split": label, "seeds": len(runs), "others_inside": float(np.mean(inside)),
           "unbounded": float(np.mean([not iv.bounded for iv in ivs])),
           "median_rel_half_width": float(np.median(widths)) if widths else None,
           "estimate_cv": float(np.std(fits) / np.mean(fits)),
           "estimate_over_max": float(np.median([f / m.max() for f, m in zip(fits, runs)]))}
    print(json.dumps(row), flush=True)
    return row


def seeds(args) -> list[dict]:
    rows = []
    for k, split in enumerate(args.splits.split(",")):
        nsamps, niters = (int(v) for v in split.split("x"))
        runs = []
        for s in range(args.seeds):
            maxima, _ = collect(args.model_name, args.dataset, args.image, args.target, nsamps, niters, 1000 + s)
            runs.append(maxima)
        if k == 0:
            for prefix in (100, 200):
                if prefix < niters:
                    rows.append(summarise_seeds(f"{nsamps}x{prefix} (prefix)", [m[:prefix] for m in runs]))
        rows.append(summarise_seeds(split, runs))
    return rows


def speed(files: int, n: int, seed: int) -> list[dict]:
    """CPU time per file (three norms) of the fit alone and of the interval, interleaved per file."""
    from cleverscore.scoring.fit import fit_many

    rng = np.random.default_rng(seed)
    fit_t = iv_t = 0.0
    for _ in range(files):
        maxima = [-weibull_min.rvs(rng.uniform(3, 30), loc=-10.0, scale=2.0, size=n, random_state=rng) for _ in range(3)]
        begin = time.process_time()
        fit_many(maxima)
        mid = time.process_time()
        for m in maxima:
            end_point_interval(m)
        fit_t += mid - begin
        iv_t += time.process_time() - mid
    row = {"files": files, "n": n, "fit_s_per_file": fit_t / files, "interval_s_per_file": iv_t / files,
           "clever_py_time_ratio": (fit_t + iv_t) / fit_t}
    print(json.dumps(row), flush=True)
    return [row]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    syn = sub.add_parser("synthetic")
    syn.add_argument("--trials", type=int, default=200)
    syn.add_argument("--seed", type=int, default=0)
    fast = sub.add_parser("speed")
    fast.add_argument("--files", type=int, default=100)
    fast.add_argument("-n", type=int, default=500)
    fast.add_argument("--seed", type=int, default=0)
    real = sub.add_parser("seeds")
    real.add_argument("-d", "--dataset", default="mnist")
    real.add_argument("-m", "--model_name", default="2-layer")
    real.add_argument("--image", type=int, default=0)
    real.add_argument("--target", choices=["top2", "least"], default="top2")
    real.add_argument("--seeds", type=int, default=10)
    real.add_argument("--splits", default="1024x500")
    for q in (syn, real, fast):
        q.add_argument("--out", default="", help="also write the rows as JSON here")
    args = p.parse_args()
    if args.mode == "synthetic":
        rows = synthetic(args.trials, args.seed)
    elif args.mode == "speed":
        rows = speed(args.files, args.n, args.seed)
    else:
        rows = seeds(args)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
