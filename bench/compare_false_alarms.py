#!/usr/bin/env python3
"""False-alarm rate (and power) of `clever.py --compare`: a model against a rerun of itself.

Each trial writes two folders of result files for the same images, whose maxima are independent
draws from reverse Weibull distributions with known end points (the true Lipschitz constants):
run A and a rerun A' with another seed. Both are scored by clever.py's own path (fit and, where
clever.py has them, the score intervals), and `compare.py` decides. The true ratio is exactly 1,
so every verdict other than "no difference" is a false alarm; a 95% interval should give about 5%.
The three norms get independent draws, so a trial gives three verdicts. With --ratio r, B's end
points are divided by r (its true scores are r times A's) and the script counts how often the
difference is found.

    python3 bench/compare_false_alarms.py --trials 20 --images 20 --maxima 100
    python3 bench/compare_false_alarms.py --ratio 1.3 --images 8 --maxima 60 --bound end_point
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import scipy.io as sio  # noqa: E402
from scipy.stats import weibull_min  # noqa: E402

KEYS = ("Gi_max", "G2_max", "G1_max")  # dual norms of L1, L2, Linf: one independent trial each


def write_run(folder: Path, ends: np.ndarray, g_x0: np.ndarray, shapes: np.ndarray, maxima: int, seed: int,
              scale: float = 0.03) -> None:
    """One run: per image, `maxima` draws below each end point (Weibull scale `scale` times it)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for image, (end, g, shape) in enumerate(zip(ends, g_x0, shapes)):
        draws = {key: end - weibull_min.rvs(shape, scale=scale * end, size=maxima, random_state=rng) for key in KEYS}
        sio.savemat(folder / f"{maxima}_1_{image}_0_1_top2_relu_order1.mat",
                    {**draws, "g_x0": g, "id": image, "true_label": 0, "target_label": 1, "info": "top2",
                     "args": {"dataset": "synthetic", "data_path": ""}})


def score(folder: Path) -> list[dict]:
    """clever.py's rows for a folder, as `--compare` makes them (its [DEBUG] lines swallowed)."""
    from cleverscore.scoring.folder import folder_files, score_files
    from cleverscore.settings import ScoreSettings

    settings = ScoreSettings()
    with contextlib.redirect_stdout(io.StringIO()):
        results, _, _ = score_files(folder_files(folder, 0), settings)
    return [row for r in results for row in r.rows(settings.method)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--maxima", type=int, default=100, help="maxima per file (collect_gradients.py -i)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ratio", type=float, default=1.0,
                   help="true score ratio B/A (B's end points divided by it); above 1 the script measures power")
    p.add_argument("--scale", type=float, default=0.03,
                   help="Weibull scale of the maxima below their end point, as a fraction of it (0.03 gives the "
                        "0.3-1.5%% spread (sd / largest) of the MNIST MLP's real maxima at -N 256)")
    p.add_argument("--bound", choices=["rerun", "end_point"], default="rerun",
                   help="the noise each score is redrawn from (clever.py --compare_bound)")
    p.add_argument("--scaled", action="store_true",
                   help="B's maxima are A's divided by --ratio (the same draws: every score exactly ratio x A's), "
                        "instead of independent draws below B's end points")
    p.add_argument("--shapes", type=float, nargs=2, default=(2.0, 6.0),
                   help="Weibull shapes drawn uniformly in this range per image (real maxima fit 3 to 40)")
    args = p.parse_args()
    from cleverscore.scoring import compare

    verdicts, widths, covered = [], [], []
    for trial in range(args.trials):
        rng = np.random.default_rng([args.seed, trial])
        ends = rng.uniform(1.0, 5.0, args.images)
        g_x0 = rng.uniform(0.5, 3.0, args.images)
        shapes = rng.uniform(*args.shapes, args.images)
        with tempfile.TemporaryDirectory() as tmp:
            runs = []
            for k in range(2):
                folder = Path(tmp) / f"run{k}"
                run_ends = ends / args.ratio if k else ends
                seed = 10_000 * args.seed + 2 * trial + (0 if args.scaled else k)
                write_run(folder, run_ends, g_x0, shapes, args.maxima, seed=seed, scale=args.scale)
                runs.append(score(folder))
        result = compare.compare_rows(runs[0], runs[1], bound=args.bound)
        for s in result.summary:
            verdicts.append(s["verdict"])
            widths.append(s["ratio_hi"] - s["ratio_lo"])
            print(f"trial {trial} {s['norm']}: B/A = {s['ratio']:.3f} [{s['ratio_lo']:.3f}, {s['ratio_hi']:.3f}]: "
                  f"{s['verdict']}", flush=True)
        # per-score coverage: does the file's 95% interval hold the true score g(x0) / end point?
        for row in runs[0] + runs[1]:
            if row.get("score_lo") is not None:
                truth = g_x0[int(row["id"])] / ends[int(row["id"])] * (args.ratio if row in runs[1] else 1.0)
                covered.append(float(row["score_lo"]) <= truth <= float(row["score_hi"]))
    if args.ratio == 1.0:
        alarms = sum(v != compare.NO_DIFFERENCE for v in verdicts)
        print(f"false alarms: {alarms} of {len(verdicts)} ({100 * alarms / len(verdicts):.1f}%); "
              f"median interval width {np.median(widths):.3f}")
    else:
        found = sum(v == (compare.MORE_ROBUST_B if args.ratio > 1 else compare.MORE_ROBUST_A) for v in verdicts)
        print(f"true ratio {args.ratio}: found by {found} of {len(verdicts)} ({100 * found / len(verdicts):.1f}%); "
              f"median interval width {np.median(widths):.3f}")
    if covered:
        print(f"score intervals holding the true score: {sum(covered)} of {len(covered)}")
    else:
        print("the rows have no score intervals: the bootstrap is over images only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
