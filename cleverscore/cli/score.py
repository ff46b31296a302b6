"""Compute CLEVER scores from a folder of `.mat` files written by collect_gradients.py.

Prints the `[STATS][L0]` summary: the mean (or `--min`) CLEVER score per target type
(targeted), or per image the minimum over its target classes and then the mean over images
(`--untargeted`); then one grouped line per kind of warning and a table to read. `--verbose`
adds the original's per-file `[DEBUG][L1]` lines (and the per-file warnings).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cleverscore.cli.common import Parser, flag_names, flags_named, number, run_cli
from cleverscore.errors import UsageError
from cleverscore.locations import program_name
from cleverscore.mat_files import check_writable_file, check_writable_folder, parse_mat_name, write_failures_reported
from cleverscore.scoring.fit import C_INIT, FIT_SELECT, METHODS, SHAPE_REG
from cleverscore.scoring.folder import (
    check_one_model,
    folder_files,
    handle_partial_images,
    print_warning_counts,
    score_files,
    summarise,
    write_tables,
)
from cleverscore.scoring.summary import summary_rows, table_lines
from cleverscore.settings import ScoreSettings


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=program_name("clever.py", __name__), description=__doc__,
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data_folder", nargs="?", default="", help="folder of .mat files (searched recursively)")
    p.add_argument("--min", dest="use_min", action="store_true", help="report the minimum over images, not the mean")
    p.add_argument("--user_type", default="", help="replace info 'user' by this string")
    p.add_argument("--use_slope", action="store_true", help="fit slope maxima (collect with --compute_slope)")
    p.add_argument("--untargeted", action="store_true", help="per image, the minimum over its target classes")
    p.add_argument("--num_samples", type=int, default=0, help="use the first K maxima of each file (0: all)")
    p.add_argument("--num_images", type=int, default=0, help="use the first K files (0: all)")
    p.add_argument("--shape_reg", type=number(minimum=0), default=SHAPE_REG, help="weight of the MLE regulariser")
    p.add_argument("--reg_param", choices=["scale", "shape"], default="scale",
                   help="parameter the regulariser penalises: scale (what the original code did) or shape")
    p.add_argument("--nthreads", type=int, default=0, help=f"fitting processes (0: {len(C_INIT) + 1})")
    p.add_argument("--plot_dir", default="", help="save a histogram + fitted pdf per file and norm here")
    p.add_argument("--method", choices=METHODS, default="mle_reg")
    p.add_argument("--fit_select", choices=FIT_SELECT, default="ks",
                   help="which start's fit is kept: ks (best KS p-value among fits whose end point is at least the "
                        "largest maximum), likelihood (largest likelihood among those), original (the published rule)")
    p.add_argument("--cap_radius", action="store_true",
                   help="[STATS] lines show min(score, supported radius): no score beyond the sampled ball")
    p.add_argument("--allow_partial", action="store_true",
                   help="--untargeted: keep images whose files miss some target classes (marked in CSV/JSON)")
    p.add_argument("--csv", default="", help="also write one row per (file, norm) to this CSV file")
    p.add_argument("--json", default="", help="also write the same rows as a JSON list")
    p.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"), default=None,
                   help="instead of one folder, compare two (A before, B after) image by image: the ratio B/A of "
                        "the mean scores with its 95%% interval, per target type and norm (--csv/--json: the pairs)")
    p.add_argument("--plot", default="", help="with --compare: a PNG of A's score against B's per pair")
    p.add_argument("--compare_bound", choices=["rerun", "end_point"], default="rerun",
                   help="with --compare: redraw each score from its rerun interval (where another seed's score "
                        "falls) or from its end-point interval (conservative: where the constant may lie)")
    p.add_argument("--verbose", action="store_true",
                   help="the original's full output: the flags, one [DEBUG][L1] line per file and norm (with [BOUND] "
                        "lines), per-file warnings, and untargeted per-image [STATS][L1] lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def check_output_paths(args: argparse.Namespace) -> None:
    """Every file and folder the run will write can be written: refused now, before any fit."""
    from cleverscore.scoring.compare import summary_path

    if args.plot and not args.compare:
        raise UsageError("--plot draws a --compare; for one folder's fits use --plot_dir")
    for flag, path in (("--csv", args.csv), ("--json", args.json), ("--plot", args.plot)):
        if path:
            check_writable_file(path, flag)
    if args.compare and args.csv:
        check_writable_file(summary_path(args.csv), "--csv (its summary file)")
    if args.plot_dir:
        check_writable_folder(args.plot_dir, "--plot_dir")


def second_order_files(files: list[Path]) -> bool:
    """Whether any of a folder's files was collected with --order 2 (by its name)."""
    for path in files:
        try:
            if parse_mat_name(path).order == 2:
                return True
        except ValueError:
            continue
    return False


def score_settings(args: argparse.Namespace) -> ScoreSettings:
    """The fitting flags as the settings object the library takes."""
    return ScoreSettings(method=args.method, shape_reg=args.shape_reg, reg_param=args.reg_param,
                         fit_select=args.fit_select, use_slope=args.use_slope, num_samples=args.num_samples or None,
                         user_type=args.user_type or None, plot_dir=Path(args.plot_dir) if args.plot_dir else None,
                         nthreads=args.nthreads)


def compare_folders(args, settings: ScoreSettings) -> int:
    """--compare DIR_A DIR_B: check both hold the same images, score them as usual, pair and compare (compare.py)."""
    from cleverscore.scoring import compare

    folders = [Path(f) for f in args.compare]
    files = [folder_files(folder, args.num_images) for folder in folders]
    for folder, side_files in zip(folders, files):
        if second_order_files(side_files):
            raise UsageError(f"{folder} holds second-order files (collected with --order 2); --compare compares "
                             "first-order folders")
        check_one_model(side_files, folder)
    compare.check_same_dataset(*(compare.folder_datasets(map(str, f)) for f in files))
    if args.verbose:
        print(vars(args))
    scored = [score_files(side_files, settings, args.verbose) for side_files in files]
    # folders of every class (--target_type 16) are compared untargeted, as --untargeted would
    untargeted = args.untargeted or all(compare.is_class_info(r.info) for results, _, _ in scored for r in results)
    rows, any_skipped = [], False
    for results, skipped, warnings in scored:
        left_out = 0
        if untargeted:
            results, left_out = handle_partial_images(results, args.allow_partial)
        print_warning_counts(warnings)
        if skipped:
            print(f"[WARNING] skipped {len(skipped)} file(s)", file=sys.stderr)
        any_skipped = any_skipped or bool(skipped) or left_out > 0
        rows.append([row for r in results for row in r.rows(args.method)])
    comparison = compare.compare_rows(rows[0], rows[1], untargeted=untargeted, bound=args.compare_bound)
    if not comparison.pairs:
        raise UsageError(f"no (image, target type) was scored in both {folders[0]} and {folders[1]}")
    for line in compare.report_lines(comparison):
        print(line)
    names = (folders[0].name, folders[1].name)
    with write_failures_reported(" or ".join(p for p in (args.csv, args.json, args.plot) if p)):
        compare.write_tables(comparison, args.csv, args.json, names)
        if args.plot:
            compare.plot_pairs(comparison, args.plot, names)
    # as for one folder, skipped files and left-out images are failures to notice (1); a "more robust"
    # verdict that the certified radii or attacks contradict says more (compare.EXIT_DISAGREEMENT)
    return compare.exit_status(comparison, any_skipped)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("num_samples", "num_images", "nthreads"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag} must be >= 0")
    if args.num_samples and args.num_samples < 3:
        raise UsageError("--num_samples must be 0 (all) or at least 3")
    if bool(args.compare) == bool(args.data_folder):
        raise UsageError("give one folder of .mat files, or --compare DIR_A DIR_B")
    check_output_paths(args)
    if args.plot_dir:
        Path(args.plot_dir).mkdir(parents=True, exist_ok=True)
    settings = score_settings(args)
    with flags_named(flag_names(parser)):
        if args.compare:
            return compare_folders(args, settings)
        return score_folder(args, settings)


def score_folder(args, settings: ScoreSettings) -> int:
    """One folder: fit every file, print the summary, write the tables."""
    files = folder_files(Path(args.data_folder), args.num_images)
    check_one_model(files, args.data_folder)
    if args.verbose:
        print(vars(args))
    results, skipped, warnings = score_files(files, settings, args.verbose)
    partial_images = 0
    if args.untargeted:
        results, partial_images = handle_partial_images(results, args.allow_partial)
    for line in summarise(results, args.untargeted, args.use_min, args.cap_radius, image_lines=args.verbose):
        print(line)
    with write_failures_reported(" or ".join(p for p in (args.csv, args.json) if p)):
        write_tables(results, args.method, Path(args.csv) if args.csv else None, Path(args.json) if args.json else None)
    print_warning_counts(warnings)
    if skipped:
        print(f"[WARNING] skipped {len(skipped)} of {len(files)} file(s)", file=sys.stderr)
    if partial_images:
        print(f"[WARNING] left out {partial_images} image(s) with missing target classes", file=sys.stderr)
    if not results:
        print("error: no usable .mat files", file=sys.stderr)
        return 1
    sys.stderr.flush()
    rows = summary_rows(results, args.untargeted, args.use_min, args.cap_radius)
    for line in ([""] if rows else []) + table_lines(rows, args.data_folder, args.use_min, args.cap_radius):
        print(line)
    return 1 if skipped or partial_images else 0


def console_main() -> None:
    """The installed console command (pyproject.toml): flags from sys.argv, exit code on the way out."""
    run_cli(main)


if __name__ == "__main__":
    console_main()
