#!/usr/bin/env python3
"""False alarms and power of `clever.py --compare` on real reruns: every pair of seed folders.

Give it a folder holding one collect_gradients.py run per seed (same model, images and settings,
only `--seed` differs), e.g. `runs/s1/mnist_2-layer`, `runs/s2/mnist_2-layer`, ... Each pair of
seeds (a, b) is compared: A = seed a, B = seed b with its maxima divided by --ratio, so B's
scores are exactly ratio x what seed b gives (the noise between A and B is real seed-to-seed
noise; the difference is known). At ratio 1 every verdict but "no difference" is a false alarm;
above 1, "B is more robust" is the right one.

    for s in 1 2 3 4 5 6 7 8; do
      python3 collect_gradients.py -m 2-layer -n 20 -N 256 -i 60 --target_type 1 --seed $s -s runs/s$s --quiet
    done
    python3 bench/compare_reruns.py runs --images 8 20 --ratios 1 1.2 1.3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import scipy.io as sio  # noqa: E402

MAXIMA_KEYS = ("G1_max", "G2_max", "Gi_max")


def seed_folders(root: Path) -> list[Path]:
    """The one results folder inside each seed folder of `root`, in name order."""
    folders = []
    for seed in sorted(p for p in root.iterdir() if p.is_dir()):
        inner = [p for p in seed.iterdir() if p.is_dir()]
        if len(inner) != 1:
            raise SystemExit(f"error: {seed} should hold exactly one results folder, found {len(inner)}")
        folders.append(inner[0])
    if len(folders) < 2:
        raise SystemExit(f"error: {root} needs at least two seed folders")
    return folders


def first_images(folder: Path, count: int) -> list[Path]:
    """The files of the `count` smallest image ids (the same images in every seed)."""
    files = sorted(folder.glob("*.mat"))
    ids = sorted({int(sio.loadmat(f, variable_names=["id"])["id"].ravel()[0]) for f in files})[:count]
    return [f for f in files if int(sio.loadmat(f, variable_names=["id"])["id"].ravel()[0]) in ids]


def scaled_copy(files: list[Path], ratio: float, out: Path) -> Path:
    """The files with every maximum divided by `ratio` (each score exactly ratio x the original's)."""
    out.mkdir(parents=True)
    for f in files:
        mat = {k: v for k, v in sio.loadmat(f).items() if not k.startswith("__")}
        for key in MAXIMA_KEYS:
            mat[key] = mat[key] / ratio
        sio.savemat(out / f.name, mat)
    return out


def score(folder: Path) -> list[dict]:
    """clever.py's rows for a folder, as `--compare` makes them (its [DEBUG] lines swallowed)."""
    from cleverscore.scoring.folder import folder_files, score_files
    from cleverscore.settings import ScoreSettings

    settings = ScoreSettings()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        results, _, _ = score_files(folder_files(folder, 0), settings)
    return [row for r in results for row in r.rows(settings.method)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="folder of seed folders")
    p.add_argument("--images", type=int, nargs="+", default=[8, 20])
    p.add_argument("--ratios", type=float, nargs="+", default=[1.0, 1.2, 1.3])
    p.add_argument("--bound", choices=["rerun", "end_point"], nargs="+", default=["rerun", "end_point"])
    args = p.parse_args()
    from cleverscore.scoring import compare

    folders = seed_folders(args.root)
    print(f"{len(folders)} seeds, {len(folders) * (len(folders) - 1) // 2} seed pairs, 3 norms each")
    for images in args.images:
        with tempfile.TemporaryDirectory() as tmp:
            rows = {}
            for k, folder in enumerate(folders):
                files = first_images(folder, images)
                for ratio in args.ratios:
                    rows[k, ratio] = score(scaled_copy(files, ratio, Path(tmp) / f"{k}_{ratio}"))
            for ratio, bound in itertools.product(args.ratios, args.bound):
                verdicts = [s["verdict"] for a, b in itertools.combinations(range(len(folders)), 2)
                            for s in compare.compare_rows(rows[a, 1.0], rows[b, ratio], bound=bound).summary]
                right = compare.NO_DIFFERENCE if ratio == 1.0 else compare.MORE_ROBUST_B
                share = np.mean([v == right for v in verdicts])
                what = "no difference (right)" if ratio == 1.0 else "B is more robust (found)"
                print(f"{images} images, B/A = {ratio:g}, bound {bound}: {what} in {share:.1%} of {len(verdicts)}; "
                      f"wrong: {sum(v != right for v in verdicts)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
