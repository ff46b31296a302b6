#!/usr/bin/env python3
"""Collect per-iteration maxima of gradient norms around test images (first step of CLEVER).

For every selected (image, target) this writes
`<save>/<dataset>_<model_name>/<Nsamps>_<Niters>_<id>_<true>_<target>_<info>_<activation>_order<k>.mat`
with the keys G1_max, G2_max, Gi_max, L1_max, L2_max, Li_max, g_x0, pred, id, true_label,
target_label, info, args and path. `clever.py` turns a folder of them into CLEVER scores.
"""

from __future__ import annotations

import argparse
import sys
import time

from errors import UsageError, quiet_tensorflow, run_cli
from target_selection import DEFAULT_TARGET_TYPE, USER

TRANSFORMS = ("defend_reduce", "defend_jpeg", "defend_png")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-d", "--dataset", choices=["mnist", "cifar", "imagenet"], default="mnist")
    p.add_argument("-m", "--model_name", default="normal",
                   help="2-layer, normal, distilled, brelu, or N,M,tag for an N-layer MLP with M hidden units")
    p.add_argument("--activation", default="relu",
                   choices=["relu", "tanh", "sigmoid", "elu", "softplus", "hard_sigmoid", "arctan"])
    p.add_argument("-N", "--Nsamps", type=int, default=1024, help="samples per iteration")
    p.add_argument("-i", "--Niters", type=int, default=500, help="iterations (maxima) per (image, target)")
    p.add_argument("-n", "--numimg", type=int, default=1, help="number of test images")
    p.add_argument("--ids", default="", help="tab-separated file with an 'id' column (and 'target' for bit 3)")
    p.add_argument("--target_type", type=int, default=DEFAULT_TARGET_TYPE,
                   help="bit mask: 1 top-2, 2 random, 4 least likely, 8 --ids targets, 16 all classes (untargeted)")
    p.add_argument("-f", "--firstimg", type=int, default=0, help="first test image (or first row of --ids)")
    p.add_argument("--transform", default="", help=f"input transformation: one of {', '.join(TRANSFORMS)}")
    p.add_argument("--order", type=int, choices=[1, 2], default=1)
    p.add_argument("--compute_slope", action="store_true", help="also collect slopes between pairs of samples")
    p.add_argument("--sample_norm", choices=["l2", "li", "l1"], default="l2", help="norm of the sampling ball")
    p.add_argument("-b", "--batch_size", type=int, default=0,
                   help="points per model call (0: 1024, or 32 for ImageNet; never more than Nsamps)")
    p.add_argument("--nthreads", type=int, default=0, help="sample worker processes for --sampler pool (0: half the cores)")
    p.add_argument("-s", "--save", default="./lipschitz_mat", help="results folder")
    p.add_argument("--seed", type=int, default=1215)
    p.add_argument("--radius", type=float, default=0.0,
                   help="sample uniformly in the ball of this radius (0: the original random radius factor)")
    p.add_argument("--sampler", choices=["graph", "pool"], default="graph",
                   help="graph: samples drawn inside the compiled step; pool: NumPy worker processes")
    p.add_argument("--data_dir", default=None, help="dataset folder (else CLEVER_DATA_DIR, else ./data)")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def validate(args: argparse.Namespace) -> None:
    """Reject bad flag values before anything heavy loads."""
    for flag, value in (("-N/--Nsamps", args.Nsamps), ("-i/--Niters", args.Niters), ("-n/--numimg", args.numimg)):
        if value < 1:
            raise UsageError(f"{flag} must be positive, got {value}")
    if args.batch_size < 0:
        raise UsageError(f"-b/--batch_size must be positive (or 0 for the default), got {args.batch_size}")
    if args.firstimg < 0:
        raise UsageError(f"-f/--firstimg must be >= 0, got {args.firstimg}")
    if args.nthreads < 0:
        raise UsageError(f"--nthreads must be >= 0, got {args.nthreads}")
    if args.radius < 0:
        raise UsageError(f"--radius must be >= 0, got {args.radius}")
    if not 0 < args.target_type < 32:
        raise UsageError(f"--target_type must be a bit mask between 1 and 31, got {args.target_type}")
    if args.transform and args.transform not in TRANSFORMS:
        raise UsageError(f"unknown --transform {args.transform!r}; valid names: {', '.join(TRANSFORMS)}")
    if args.target_type & USER and not args.ids and args.target_type == USER:
        raise UsageError("--target_type 8 needs an --ids file with a 'target' column")
    if args.dataset == "imagenet":
        raise UsageError("--dataset imagenet is not available yet")
    if args.order == 2:
        raise UsageError("--order 2 (second-order bound) is not available yet; use --order 1")


def select_images(args, num_test: int, num_classes: int) -> list[tuple[int, int | None]]:
    """(image id, user target) pairs to process."""
    if args.ids:
        from target_selection import read_ids_file

        entries = read_ids_file(args.ids, bool(args.target_type & USER), num_classes, num_test)
        entries = entries[args.firstimg : args.firstimg + args.numimg]
        if not entries:
            raise UsageError(f"--firstimg {args.firstimg} is past the end of the --ids file")
        return [(e.id, e.target) for e in entries]
    if args.firstimg >= num_test:
        raise UsageError(f"--firstimg {args.firstimg} is past the end of the test set ({num_test} images)")
    last = min(args.firstimg + args.numimg, num_test)
    if args.firstimg + args.numimg > num_test:
        print(f"[WARNING] only {last - args.firstimg} images from --firstimg {args.firstimg} to the end of the test set",
              file=sys.stderr)
    return [(i, None) for i in range(args.firstimg, last)]


def mat_contents(result, image_id: int, true_label: int, info: str, args_dict: dict, path: str) -> dict:
    return {
        "L2_max": result.slope_max[:, 0], "L1_max": result.slope_max[:, 1], "Li_max": result.slope_max[:, 2],
        "G2_max": result.grad_max[:, 0], "G1_max": result.grad_max[:, 1], "Gi_max": result.grad_max[:, 2],
        "g_x0": result.g_x0, "pred": result.pred, "id": image_id, "true_label": true_label,
        "target_label": result.target, "info": info, "args": args_dict, "path": path,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    validate(args)
    quiet_tensorflow()
    import numpy as np

    from datasets import load_dataset
    from estimate_gradient_norm import EstimateLipschitz, NonFiniteError
    from log_lines import collection_done_line, collection_summary_lines, datagen_line
    from mat_files import MatName, is_complete, result_folder, save_mat_atomically
    from shmemarray import remove_stale_segments
    from target_selection import choose_targets

    print(vars(args))
    remove_stale_segments()
    data = load_dataset(args.dataset, args.data_dir)
    test_x, test_y = data.test_data, data.test_labels
    images = select_images(args, len(test_x), data.num_classes)
    estimator = EstimateLipschitz(seed=args.seed, nthreads=args.nthreads, sampler=args.sampler)
    estimator.load_model(args.dataset, args.model_name, args.activation, batch_size=args.batch_size,
                         compute_slope=args.compute_slope, order=args.order)
    folder = result_folder(args.save, args.dataset, args.model_name)
    args_dict = {k: ("" if v is None else v) for k, v in vars(args).items()}
    total, failed, start = 0, [], time.time()
    logits = estimator.predict(test_x[[i for i, _ in images]])
    try:
        for no, ((image_id, user_target), pred) in enumerate(zip(images, logits), start=1):
            true_label = int(np.argmax(test_y[image_id]))
            predicted = int(np.argmax(pred))
            chosen = choose_targets(pred, args.target_type, args.seed, image_id, user_target)
            correct = predicted == true_label
            print(datagen_line(no, image_id, true_label, predicted, correct,
                               [t for t, _ in chosen] if correct else [], [i for _, i in chosen] if correct else []))
            if not correct:
                print(f"[WARNING] image {image_id} is misclassified (true {true_label}, predicted {predicted}); skipping")
                continue
            if any(t == true_label for t, _ in chosen):
                raise UsageError(f"target class of image {image_id} equals its true class {true_label}")
            todo = []
            for target, info in chosen:
                name = MatName(args.Nsamps, args.Niters, image_id, true_label, target, info, args.activation, args.order)
                path = folder / name.filename
                if is_complete(path):
                    print(f"file {path} already exists. Skipping this sample...")
                else:
                    todo.append((target, info, path))
            if not todo:
                continue
            try:
                results = estimator.estimate_targets(
                    test_x[image_id], true_label, [t for t, _, _ in todo], args.Nsamps, args.Niters,
                    args.sample_norm, transform=args.transform or None, image_id=image_id, radius=args.radius or None)
            except NonFiniteError as err:
                print(f"[ERROR] {err}; skipping image {image_id}", file=sys.stderr)
                failed.append(image_id)
                continue
            for result, (target, info, path) in zip(results, todo):
                total += 1
                estimator.log_iterations(result)
                for line in collection_summary_lines(result.g_x0, result.grad_max.max(0), result.slope_max.max(0),
                                                     args.compute_slope):
                    print(line)
                print(collection_done_line(total, no - 1, image_id, time.time() - start, true_label, target, info))
                save_mat_atomically(path, mat_contents(result, image_id, true_label, info, args_dict,
                                                       str(path.with_suffix(""))))
                print("saved to", path)
            sys.stdout.flush()
    finally:
        estimator.close()
    if failed:
        print(f"[WARNING] {len(failed)} image(s) stopped on NaN/Inf values: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
