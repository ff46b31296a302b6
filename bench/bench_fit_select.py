#!/usr/bin/env python3
"""Which start should the fit keep? The three `--fit_select` rules on maxima with a known end point.

For each (shape, n) setting, draws `--trials` sets of maxima s = 10 - Weibull(shape, scale 2) (end
point 10), fits them with every rule and prints, per rule, the median and 90th percentile of the
relative error of the estimate, how often the estimate lies below max(s), and how often and by
how much "ks"/"likelihood" change the original's estimate. With `--mat_folder`, does the same on
real `.mat` files (no truth there: only the changes and the estimates below the largest maximum).

    python3 bench/bench_fit_select.py --trials 100
    python3 bench/bench_fit_select.py --trials 0 --mat_folder lipschitz_mat/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import weibull_min

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cleverscore.scoring.fit import FIT_SELECT, fit_reverse_weibull  # noqa: E402

SHAPES = (2.5, 4.0, 8.0, 15.0, 30.0)
SIZES = (100, 500)
END_POINT, SCALE = 10.0, 2.0


def estimates(sample: np.ndarray) -> dict[str, float]:
    return {rule: fit_reverse_weibull(sample, select=rule).estimate for rule in FIT_SELECT}


def summarise(label: str, rows: list[dict[str, float]], largest: list[float], truth: float | None) -> None:
    orig = np.array([r["original"] for r in rows])
    top = np.array(largest)
    parts = [label]
    for rule in FIT_SELECT:
        est = np.array([r[rule] for r in rows])
        if truth is not None:
            err = np.abs(est - truth) / truth
            parts.append(f"{rule}: med err {np.median(err):.4f} p90 {np.quantile(err, 0.9):.4f}")
        below = int(np.sum(est < top))
        changed = np.abs(est - orig) > 1e-6 * orig  # starts that reach the same optimum differ in the 7th digit
        shift = np.abs(est - orig)[changed] / orig[changed]
        parts.append(f"{rule}: below max {below}/{len(rows)}, changed {int(changed.sum())} "
                     f"(max change {shift.max() if shift.size else 0:.4f})")
    print(" | ".join(parts), flush=True)


def synthetic(trials: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        for n in SIZES:
            rows, largest = [], []
            for _ in range(trials):
                s = -weibull_min.rvs(shape, loc=-END_POINT, scale=SCALE, size=n, random_state=rng)
                rows.append(estimates(s))
                largest.append(float(s.max()))
            summarise(f"shape {shape:4} n {n:3}", rows, largest, END_POINT)


def real(folder: Path) -> None:
    from cleverscore.scoring.folder import read_maxima

    rows, largest = [], []
    for path in sorted(folder.rglob("*.mat")):
        try:
            _, maxima = read_maxima(path, False, 0)
        except ValueError:
            continue
        for m in maxima:
            rows.append(estimates(m))
            largest.append(float(m.max()))
    summarise(f"{folder} ({len(rows)} file-norms)", rows, largest, None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mat_folder", action="append", default=[])
    args = p.parse_args()
    if args.trials:
        synthetic(args.trials, args.seed)
    for folder in args.mat_folder:
        real(Path(folder))


if __name__ == "__main__":
    main()
