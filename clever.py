#!/usr/bin/env python3
"""Compute CLEVER scores from a folder of `.mat` files written by collect_gradients.py.

Prints one `[DEBUG][L1]` line per file and norm, then the `[STATS][L0]` summary: the mean (or
`--min`) CLEVER score per target type (targeted), or per image the minimum over its target
classes and then the mean over images (`--untargeted`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clever_fit import C_INIT, METHODS, SHAPE_REG, WeibullFit, clever_score, fit_many, second_order_bound
from errors import UsageError, run_cli
from log_lines import debug_fit_line, debug_maxsamp_line, stats_line, untargeted_image_line
from mat_files import load_mat, parse_mat_name
from norms import L2, NORMS, LpNorm

INFO_ORDER = ("least", "random", "top2")


@dataclass
class FileScores:
    """CLEVER scores of one (image, target) file, in NORMS order (L1, L2, Linf)."""

    id: int
    true_label: int
    target_label: int
    info: str
    g_x0: float
    scores: list[float]
    fits: list[WeibullFit]
    path: str = ""
    norms: tuple[LpNorm, ...] = NORMS
    order: int = 1

    def rows(self, method: str) -> list[dict]:
        """One table row per norm, as written by --csv and --json."""
        return [{"file": self.path, "id": self.id, "true_label": self.true_label, "target_label": self.target_label,
                 "info": self.info, "norm": norm.label, "g_x0": self.g_x0, "score": score, "lipschitz": fit.estimate,
                 "shape": fit.shape, "loc": fit.loc, "scale": fit.scale, "ks": fit.ks, "pVal": fit.pval,
                 "method": method if fit.fitted or method == "maxsamp" else f"{method}:fallback_max",
                 "order": self.order}
                for norm, score, fit in zip(self.norms, self.scores, self.fits)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data_folder", help="folder of .mat files (searched recursively)")
    p.add_argument("--min", dest="use_min", action="store_true", help="report the minimum over images, not the mean")
    p.add_argument("--user_type", default="", help="replace info 'user' by this string")
    p.add_argument("--use_slope", action="store_true", help="fit slope maxima (collect with --compute_slope)")
    p.add_argument("--untargeted", action="store_true", help="per image, the minimum over its target classes")
    p.add_argument("--num_samples", type=int, default=0, help="use the first K maxima of each file (0: all)")
    p.add_argument("--num_images", type=int, default=0, help="use the first K files (0: all)")
    p.add_argument("--shape_reg", type=float, default=SHAPE_REG, help="weight of the MLE regulariser")
    p.add_argument("--reg_param", choices=["scale", "shape"], default="scale",
                   help="parameter the regulariser penalises: scale (what the original code did) or shape")
    p.add_argument("--nthreads", type=int, default=0, help=f"fitting processes (0: {len(C_INIT) + 1})")
    p.add_argument("--plot_dir", default="", help="save a histogram + fitted pdf per file and norm here")
    p.add_argument("--method", choices=METHODS, default="mle_reg")
    p.add_argument("--csv", default="", help="also write one row per (file, norm) to this CSV file")
    p.add_argument("--json", default="", help="also write the same rows as a JSON list")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def find_mat_files(folder: Path) -> list[Path]:
    """Every .mat below the folder, sorted by image id then info (unparseable names last)."""

    def key(path: Path):
        try:
            name = parse_mat_name(path)
            return (0, name.id, name.info, path.name)
        except ValueError:
            return (1, 0, "", path.name)

    return sorted(folder.rglob("*.mat"), key=key)


def read_maxima(path: Path, use_slope: bool, num_samples: int) -> tuple[dict, list[np.ndarray]]:
    """A file's header fields and its maxima per norm (NORMS order); ValueError if unusable."""
    name = parse_mat_name(path)
    try:
        mat = load_mat(path)
    except Exception as err:  # noqa: BLE001 - scipy raises many types for corrupt files
        raise ValueError(f"cannot read .mat ({type(err).__name__}: {err})") from None
    order = 2 if "H2_max" in mat else 1
    if order == 2:
        keys = ["H2_max"]
        if "g_x0_grad_2_norm" not in mat:
            raise ValueError("missing keys ['g_x0_grad_2_norm']")
    else:
        keys = [n.slope_key if use_slope else n.grad_key for n in NORMS]
    missing = [k for k in keys + ["g_x0"] if k not in mat]
    if missing:
        raise ValueError(f"missing keys {missing}")
    maxima = [np.abs(np.ravel(mat[k]).astype(np.float64)) if order == 2 else np.ravel(mat[k]).astype(np.float64)
              for k in keys]
    if num_samples:
        maxima = [m[:num_samples] for m in maxima]
    header = {
        "id": int(np.squeeze(mat["id"])) if "id" in mat else name.id,
        "true_label": int(np.squeeze(mat["true_label"])) if "true_label" in mat else name.true_label,
        "target_label": int(np.squeeze(mat["target_label"])) if "target_label" in mat else name.target_label,
        "info": str(np.squeeze(mat["info"])) if "info" in mat else name.info,
        "g_x0": float(np.squeeze(mat["g_x0"])),
        "order": order,
        "grad_norm": float(np.squeeze(mat["g_x0_grad_2_norm"])) if order == 2 else 0.0,
        "figname": f"Fig_{name.info}_{name.id}_{name.true_label}_{name.target_label}_Nsamp_{len(maxima[0])}",
    }
    return header, maxima


def plot_fit(sample: np.ndarray, fit: WeibullFit, norm: LpNorm, path: Path) -> None:
    """Histogram of -maxima with the fitted weibull_min pdf; title with the fit parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import weibull_min

    fig, ax = plt.subplots(1, 1)
    ax.hist(-sample, density=True, bins=20, histtype="stepfilled", alpha=0.6, label="-maxima")
    if fit.fitted:
        x = np.linspace(-1.01 * sample.max(), -0.99 * sample.min(), 200)
        ax.plot(x, weibull_min.pdf(x, fit.shape, fit.loc, fit.scale), "r-", label=f"fitted pdf {norm.label}-bnd")
    ax.legend(loc="best", frameon=False)
    ax.set_xlabel(f"-Lips_{'i' if norm.dual == np.inf else int(norm.dual)}")
    ax.set_ylabel("pdf")
    ax.set_title(f"c = {fit.shape:.2f}, loc = {fit.loc:.2f}, scale = {fit.scale:.2f}, "
                 f"ks = {fit.ks:.2f}, pVal = {fit.pval:.2f}")
    fig.savefig(path)
    plt.close(fig)


def score_file(path: Path, args, executor) -> FileScores:
    header, maxima = read_maxima(path, args.use_slope, args.num_samples)
    fits = fit_many(maxima, args.method, args.shape_reg, 2 if args.reg_param == "scale" else 0, executor)
    info = args.user_type if args.user_type and header["info"] == "user" else header["info"]
    if header["order"] == 2:
        norms = (L2,)
        scores = [second_order_bound(header["g_x0"], header["grad_norm"], fits[0].estimate)]
    else:
        norms = NORMS
        scores = [clever_score(header["g_x0"], f.estimate) for f in fits]
    result = FileScores(header["id"], header["true_label"], header["target_label"], info, header["g_x0"], scores, fits,
                        str(path), norms, header["order"])
    for norm, score, fit, sample in zip(norms, scores, fits, maxima):
        if args.method == "maxsamp":
            print(debug_maxsamp_line(result.id, result.true_label, result.target_label, info, norm.bnd_norm, score))
        else:
            print(debug_fit_line(result.id, result.true_label, result.target_label, info, norm.bnd_norm, score,
                                 fit.ks, fit.pval, fit.shape, fit.loc, fit.scale, result.g_x0))
        if args.plot_dir:
            suffix = "_slope" if args.use_slope else ""
            plot_fit(sample, fit, norm, Path(args.plot_dir) / f"{header['figname']}{suffix}_{norm.label}.png")
    return result


def summarise(results: list[FileScores], untargeted: bool, use_min: bool) -> list[str]:
    """The `[STATS]` summary lines: first-order files, then second-order files (L2 only)."""
    lines = []
    for order in (1, 2):
        subset = [r for r in results if r.order == order]
        if subset:
            labels = tuple(n.label for n in subset[0].norms)
            lines += _summary(subset, labels, untargeted, use_min)
    return lines


def _summary(results: list[FileScores], labels: tuple[str, ...], untargeted: bool, use_min: bool) -> list[str]:
    reduce = min if use_min else (lambda xs: sum(xs) / len(xs))
    columns = range(len(labels))
    lines = []
    if untargeted:
        per_image: dict[int, list[FileScores]] = defaultdict(list)
        for r in results:
            per_image[r.id].append(r)
        image_scores = []
        for image, rs in per_image.items():
            best = [min(r.scores[k] for r in rs) for k in columns]
            lines.append(untargeted_image_line(image, len(rs) + 1, best, labels))
            image_scores.append(best)
        lines.append(stats_line("untargeted", [reduce([s[k] for s in image_scores]) for k in columns], labels))
        return lines
    by_info: dict[str, list[FileScores]] = defaultdict(list)
    for r in results:
        by_info[r.info].append(r)
    order = [i for i in INFO_ORDER if i in by_info] + sorted(i for i in by_info if i not in INFO_ORDER)
    for info in order:
        lines.append(stats_line(info, [reduce([r.scores[k] for r in by_info[info]]) for k in columns], labels))
    return lines


COLUMNS = ["file", "id", "true_label", "target_label", "info", "norm", "g_x0", "score", "lipschitz", "shape", "loc",
           "scale", "ks", "pVal", "method", "order"]


def write_tables(results: list[FileScores], args) -> None:
    """--csv / --json: one row per (file, norm), written atomically by pandas."""
    if not (args.csv or args.json):
        return
    import pandas as pd

    from mat_files import write_atomically

    table = pd.DataFrame([row for r in results for row in r.rows(args.method)], columns=COLUMNS)
    for target, write in ((args.csv, lambda p: table.to_csv(p, index=False)),
                          (args.json, lambda p: table.to_json(p, orient="records", indent=1))):
        if target:
            write_atomically(target, write)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.data_folder)
    if not folder.is_dir():
        raise UsageError(f"data folder {folder} does not exist")
    for flag in ("num_samples", "num_images", "nthreads"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag} must be >= 0")
    if args.num_samples and args.num_samples < 3:
        raise UsageError("--num_samples must be 0 (all) or at least 3")
    files = find_mat_files(folder)
    if args.num_images:
        files = files[: args.num_images]
    if not files:
        raise UsageError(f"no .mat files found below {folder}")
    if args.plot_dir:
        Path(args.plot_dir).mkdir(parents=True, exist_ok=True)
    print(vars(args))
    results, skipped = [], []
    workers = args.nthreads or len(C_INIT) + 1
    executor = None
    if args.method != "maxsamp" and workers > 1:
        executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    try:
        for path in files:
            try:
                results.append(score_file(path, args, executor))
            except ValueError as err:
                print(f"[WARNING] skipping {path}: {err}", file=sys.stderr)
                skipped.append(path)
            sys.stdout.flush()
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    for line in summarise(results, args.untargeted, args.use_min):
        print(line)
    write_tables(results, args)
    if skipped:
        print(f"[WARNING] skipped {len(skipped)} of {len(files)} file(s)", file=sys.stderr)
    if not results:
        print("error: no usable .mat files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
