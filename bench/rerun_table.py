#!/usr/bin/env python3
"""Tabulate how far the Lipschitz estimate of one run lies from another run's: the rerun interval's table.

For reverse Weibull maxima of shape k and n iterations, two independent runs give two
estimates (clever.py's default fit: mle_reg, KS selection, fallback to the largest maximum).
Their difference, in units of the Weibull scale, has a distribution that depends on k and n
alone (the fit is location-scale equivariant). This script simulates it on a grid of (k, n) and
writes the 2.5% and 97.5% quantiles of the difference to cleverscore/scoring/rerun_table.json,
which `cleverscore.scoring.rerun` interpolates. Regenerate it when the fit changes:

    python3 bench/rerun_table.py --pairs 150          # about 20 min on one core
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = (1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 35.0, 60.0)
SIZES = (20, 50, 100, 200, 500, 1000)
OUT = Path(__file__).resolve().parents[1] / "cleverscore" / "scoring" / "rerun_table.json"


def cell(args: tuple[float, int, int, int]) -> dict:
    """Quantiles of (estimate_a - estimate_b) / scale for `pairs` simulated run pairs."""
    from scipy.stats import weibull_min

    from cleverscore.scoring.fit import fit_reverse_weibull

    shape, n, pairs, seed = args
    rng = np.random.default_rng([seed, int(shape * 100), n])
    diffs, fallbacks = [], 0
    for _ in range(pairs):
        estimates = []
        for _ in range(2):
            sample = -weibull_min.rvs(shape, scale=1.0, size=n, random_state=rng)  # end point 0, scale 1
            fit = fit_reverse_weibull(sample)
            fallbacks += not fit.fitted
            estimates.append(fit.estimate)
        diffs.append(estimates[0] - estimates[1])
    d = np.asarray(diffs)
    return {"shape": shape, "n": n, "q_lo": float(np.quantile(d, 0.025)), "q_hi": float(np.quantile(d, 0.975)),
            "fallback_share": fallbacks / (2 * pairs), "pairs": pairs}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=150, help="simulated run pairs per (shape, n)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    jobs = [(k, n, args.pairs, args.seed) for k in SHAPES for n in SIZES]
    begin = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        cells = list(pool.map(cell, jobs))
    table = {"about": "quantiles of (estimate_a - estimate_b) / weibull scale for two runs of n maxima of shape k, "
                      "clever.py's default fit (bench/rerun_table.py)",
             "level": 0.95, "shapes": list(SHAPES), "sizes": list(SIZES), "cells": cells}
    Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out}: {len(cells)} cells in {time.time() - begin:.0f} s")
    for c in cells:
        print(f"k={c['shape']:5g} n={c['n']:5d}  q = [{c['q_lo']:+.4f}, {c['q_hi']:+.4f}]  "
              f"fallbacks {c['fallback_share']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
