#!/usr/bin/env python3
"""Collect per-iteration maxima of gradient norms around test images (first step of CLEVER).

For every selected (image, target) this writes
`<save>/<dataset>_<model_name>/<Nsamps>_<Niters>_<id>_<true>_<target>_<info>_<activation>_order<k>.mat`
with the keys G1_max, G2_max, Gi_max, L1_max, L2_max, Li_max, g_x0, pred, id, true_label,
target_label, info, args and path, and the ball actually sampled: sample_norm, sample_radius and
input_dim. `clever.py` turns a folder of them into CLEVER scores.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cleverscore.cli.common import quiet_tensorflow, run_cli
from cleverscore.cli.flags import add_user_model_flags
from cleverscore.errors import CleverError, UsageError
from cleverscore.log_lines import datagen_line
from cleverscore.norms import GRAD_KEYS
from cleverscore.running.targets import DEFAULT_TARGET_TYPE, USER
from cleverscore.sampling.transforms import TRANSFORMS


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
    p.add_argument("--rel_tol", type=float, default=0.0,
                   help="stop each (image, target) once its L2 score's 95%% interval has a relative half-width <= this "
                        "(checked after 50 iterations, then every 10; -i is the cap); 0: always -i iterations")
    p.add_argument("--search_steps", type=int, default=0,
                   help="after sampling, this many steps of gradient ascent on each gradient norm from the best "
                        "samples; the norms found cap the score from above (0: off)")
    p.add_argument("--sampler", choices=["graph", "pool"], default="graph",
                   help="graph: samples drawn inside the compiled step; pool: NumPy worker processes")
    p.add_argument("--devices", type=int, default=0,
                   help="split each batch across N devices (MirroredStrategy); 0: all visible GPUs")
    p.add_argument("--data_dir", default=None, help="dataset folder (else CLEVER_DATA_DIR, else ./data)")
    p.add_argument("--weights", default="imagenet",
                   help="ImageNet weights: imagenet (Keras cache or download), a file path, or random (testing)")
    p.add_argument("--labels", default="", help="ImageNet: a '<file name> <class index>' file (0-based), e.g. val.txt")
    add_user_model_flags(p)
    p.add_argument("--ray", default="", metavar="ADDRESS",
                   help="run on Ray: local (a Ray instance on this machine), auto or host:port (a running cluster)")
    p.add_argument("--ray_workers", type=int, default=0,
                   help="with --ray: worker actors (0: one per GPU in the cluster, else one per machine)")
    p.add_argument("--overwrite", action="store_true", help="recompute (image, target) pairs whose file exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
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
    if args.devices < 0:
        raise UsageError(f"--devices must be >= 0, got {args.devices}")
    if args.nthreads < 0:
        raise UsageError(f"--nthreads must be >= 0, got {args.nthreads}")
    if args.ray_workers < 0:
        raise UsageError(f"--ray_workers must be >= 0, got {args.ray_workers}")
    if args.ray_workers and not args.ray:
        raise UsageError("--ray_workers needs --ray ADDRESS")
    if args.radius < 0:
        raise UsageError(f"--radius must be >= 0, got {args.radius}")
    if not 0 <= args.rel_tol < 1:
        raise UsageError(f"--rel_tol must be in [0, 1), got {args.rel_tol}")
    if args.rel_tol and args.order == 2:
        raise UsageError("--rel_tol works with --order 1 only")
    if args.search_steps < 0:
        raise UsageError(f"--search_steps must be >= 0, got {args.search_steps}")
    if args.search_steps and (args.order == 2 or args.sample_norm == "l1" or args.transform):
        raise UsageError("--search_steps works with --order 1, --sample_norm l2 or li, and no --transform")
    if not 0 < args.target_type < 32:
        raise UsageError(f"--target_type must be a bit mask between 1 and 31, got {args.target_type}")
    if args.transform and args.transform not in TRANSFORMS:
        raise UsageError(f"unknown --transform {args.transform!r}; valid names: {', '.join(TRANSFORMS)}")
    if args.target_type & USER and not args.ids and args.target_type == USER:
        raise UsageError("--target_type 8 needs an --ids file with a 'target' column")
    if args.dataset == "imagenet" and not args.model_path:
        from cleverscore.models.imagenet import registry_entry

        registry_entry(args.model_name)  # refuse unknown names before anything loads
    from cleverscore.cli.flags import check_user_model_flags, parse_input_range
    from cleverscore.mat_files import check_writable_folder

    args.range = parse_input_range(args.input_range)
    check_user_model_flags(args)
    if args.order == 2 and (args.compute_slope or args.transform or args.sampler == "pool"):
        raise UsageError("--order 2 cannot be combined with --compute_slope, --transform or --sampler pool")
    check_writable_folder(output_folder(args))


def output_folder(args: argparse.Namespace):
    """`<save>/<data name>_<model name>`, as main() will name it, known before anything loads."""
    from cleverscore.mat_files import result_folder
    from cleverscore.models.user import model_label

    data = model_label(args.data_path) if args.data_path else args.dataset
    model = model_label(args.model_path) if args.model_path else args.model_name
    return result_folder(args.save, data, model)


def select_images(args, num_test: int, num_classes: int | None) -> list[tuple[int, int | None]]:
    """(image id, user target) pairs to process."""
    if args.ids:
        from cleverscore.running.targets import read_ids_file

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


SEARCH_KEYS = tuple(k.replace("_max", "_search") for k in GRAD_KEYS)  # the estimator's column order


def ball_contents(ball) -> dict:
    """Keys (new to this version) describing the ball actually sampled; empty if unknown."""
    if ball is None:
        return {}
    return {"sample_norm": ball.sample_norm, "sample_radius": ball.radius, "input_dim": ball.input_dim}


def mat_contents(result, image_id: int, true_label: int, info: str, args_dict: dict, path: str) -> dict:
    return {
        "L2_max": result.slope_max[:, 0], "L1_max": result.slope_max[:, 1], "Li_max": result.slope_max[:, 2],
        "G2_max": result.grad_max[:, 0], "G1_max": result.grad_max[:, 1], "Gi_max": result.grad_max[:, 2],
        "g_x0": result.g_x0, "pred": result.pred, "id": image_id, "true_label": true_label,
        "target_label": result.target, "info": info, "args": args_dict, "path": path,
        "niters_used": result.niters_used, "stop_reason": result.stop_reason, **ball_contents(result.ball),
        **({} if result.search_max is None else dict(zip(SEARCH_KEYS, result.search_max))),
    }


def load_inputs(args):
    """(images, integer labels, dataset label for the output folder)."""
    if args.data_path:
        from cleverscore.data.user import load_user_data
        from cleverscore.models.user import model_label

        x, y = load_user_data(args.data_path, args.range)
        return x, y, model_label(args.data_path)
    if args.dataset == "imagenet":
        from cleverscore.data.imagenet import find_image_folder, load_imagenet
        from cleverscore.models.imagenet import registry_entry

        folder, found_labels = find_image_folder(args.data_dir)
        labels = args.labels or (str(found_labels) if found_labels else None)
        size = registry_entry(args.model_name).size
        x, y, _ = load_imagenet(folder, size, args.firstimg + args.numimg, 0, args.seed, labels)
        return x, y, "imagenet"
    from cleverscore.data import load_dataset

    data = load_dataset(args.dataset, args.data_dir)
    return data.test_data, np.argmax(data.test_labels, axis=1), args.dataset


def load_classifier(args, estimator, image_shape: tuple[int, ...] | None = None) -> str:
    """Load the model into the estimator; return its name for the output folder.

    `image_shape` (H, W, C) of the inputs lets an ONNX model's layout and dynamic sizes be resolved."""
    model, name = None, args.model_name
    if args.model_path:
        from cleverscore.cli.flags import user_model_from_args

        model, name = user_model_from_args(args, image_shape)
    elif args.dataset == "imagenet":
        from cleverscore.models.imagenet import build_imagenet_model

        model = build_imagenet_model(args.model_name, args.weights, args.seed)
    estimator.load_model(args.dataset, args.model_name, args.activation, model=model, batch_size=args.batch_size,
                         compute_slope=args.compute_slope, order=args.order, input_range=args.range,
                         devices=args.devices)
    return name


def pending_targets(args, folder, image_id: int, true_label: int, chosen) -> list:
    """(target, info, path) for the targets of an image whose result file is missing."""
    from cleverscore.mat_files import MatName, is_complete

    todo = []
    for target, info in chosen:
        name = MatName(args.Nsamps, args.Niters, image_id, true_label, target, info, args.activation, args.order)
        path = folder / name.filename
        if not args.overwrite and is_complete(path):
            print(f"file {path} already exists. Skipping this sample...")
        else:
            todo.append((target, info, path))
    return todo


def hessian_contents(result, image_id: int, true_label: int, info: str, args_dict: dict, path: str) -> dict:
    return {"H2_max": result.h2_max, "g_x0": result.g_x0, "g_x0_grad_2_norm": result.grad_norm_x0,
            "pred": result.pred, "id": image_id, "true_label": true_label, "target_label": result.target,
            "info": info, "args": args_dict, "path": path, **ball_contents(result.ball)}


@dataclass
class WorkItem:
    """One image with its pending targets: what a worker, in this process or on Ray, computes."""

    seq: int  # position of the image in the run, as printed in the [STATS] lines
    image_id: int
    true_label: int
    x0: np.ndarray
    todo: list[tuple[int, str, Path]]  # (target, info, result file)


@dataclass
class ItemOutcome:
    """A work item's results, one TargetResult (order 1) or HessianResult (order 2) per target."""

    item: WorkItem
    results: list = field(default_factory=list)
    error: str | None = None  # NaN/Inf logits or gradients for the whole item: nothing to save


def compute_item(estimator, args, item: WorkItem, progress=None) -> ItemOutcome:
    """Collect one work item's maxima: the same call in-process and on a Ray worker."""
    from cleverscore.sampling.estimator import NonFiniteError

    targets = [t for t, _, _ in item.todo]
    try:
        if args.order == 2:
            results = [estimator.estimate_hessian(item.x0, item.true_label, t, args.Nsamps, args.Niters,
                                                  args.sample_norm, item.image_id, args.radius or None, progress)
                       for t in targets]
        else:
            results = estimator.estimate_targets(
                item.x0, item.true_label, targets, args.Nsamps, args.Niters, args.sample_norm,
                transform=args.transform or None, image_id=item.image_id, radius=args.radius or None, progress=progress,
                rel_tol=args.rel_tol)
            if args.search_steps:
                found = estimator.search_maxima(item.x0, item.true_label, targets, args.search_steps, args.sample_norm,
                                                args.radius or None, item.image_id)
                for result, row in zip(results, found):
                    result.search_max = np.maximum(row, result.grad_max.max(0))
    except NonFiniteError as err:
        return ItemOutcome(item, error=str(err))
    return ItemOutcome(item, results)


class LocalExecutor:
    """Runs work items one after another in this process, with a progress bar per item."""

    def __init__(self, args, estimator):
        self.args, self.estimator = args, estimator

    def run(self, items: Iterable[WorkItem]) -> Iterator[ItemOutcome]:
        from cleverscore.log_lines import ProgressBar

        for item in items:
            label = f"image {item.image_id} ({len(item.todo)} target{'s' * (len(item.todo) > 1)})"
            progress = None if self.args.quiet else (lambda n, s, label=label: ProgressBar(label, n, s))
            yield compute_item(self.estimator, self.args, item, progress)

    def close(self) -> None:
        pass


def plan_items(args, test_x, test_y, images, logits, names, folder, counters) -> Iterator[WorkItem]:
    """Print each image's [DATAGEN] line and yield its pending targets as work items.

    A generator, so that a local run prints each image's lines next to its results, as before.
    """
    from cleverscore.running.targets import choose_targets

    for no, ((image_id, user_target), pred) in enumerate(zip(images, logits), start=1):
        true_label, predicted = int(test_y[image_id]), int(np.argmax(pred))
        if not np.all(np.isfinite(pred)):
            print(f"[ERROR] logits of image {image_id} are NaN or Inf; skipping it", file=sys.stderr)
            counters["failed"].append((image_id, None))
            continue
        chosen = choose_targets(pred, args.target_type, args.seed, image_id, user_target)
        correct = predicted == true_label
        print(datagen_line(no, image_id, true_label, predicted, correct,
                           [t for t, _ in chosen] if correct else [], [i for _, i in chosen] if correct else [],
                           (names[true_label], names[predicted]) if names else None))
        if not correct:
            print(f"[WARNING] image {image_id} is misclassified (true {true_label}, predicted {predicted}); skipping")
            continue
        todo = pending_targets(args, folder, image_id, true_label, chosen)
        # Order 2 collects target by target (no shared samples), so each target is an item of its own.
        for group in ([[t] for t in todo] if args.order == 2 else [todo] if todo else []):
            yield WorkItem(no - 1, image_id, true_label, test_x[image_id], group)


def save_outcome(args, estimator, outcome: ItemOutcome, counters: dict) -> None:
    """Print a finished item's lines and write its files atomically (always in the driver)."""
    from cleverscore.log_lines import (
        collection_done_line,
        collection_summary_lines,
        hessian_iteration_line,
        hessian_summary_line,
    )
    from cleverscore.mat_files import save_mat_atomically

    item = outcome.item
    if outcome.error:
        print(f"[ERROR] {outcome.error}; skipping image {item.image_id}", file=sys.stderr)
        counters["failed"] += [(item.image_id, t) for t, _, _ in item.todo]
        return
    for result, (target, info, path) in zip(outcome.results, item.todo):
        if getattr(result, "error", None):
            print(f"[ERROR] {result.error}; no file written for it", file=sys.stderr)
            counters["failed"].append((item.image_id, target))
            continue
        counters["total"] += 1
        if args.order == 2:
            for it, (h2, elapsed) in enumerate(zip(result.h2_max, np.cumsum(result.iter_times))):
                print(hessian_iteration_line(it, elapsed, result.iter_times[it], h2))
            print(hessian_summary_line(result.g_x0, result.grad_norm_x0, result.h2_max))
            contents = hessian_contents(result, item.image_id, item.true_label, info, counters["args"],
                                        str(path.with_suffix("")))
        else:
            estimator.log_iterations(result)
            for line in collection_summary_lines(result.g_x0, result.grad_max.max(0), result.slope_max.max(0),
                                                 args.compute_slope):
                print(line)
            contents = mat_contents(result, item.image_id, item.true_label, info, counters["args"],
                                    str(path.with_suffix("")))
        print(collection_done_line(counters["total"], item.seq, item.image_id, time.time() - counters["start"],
                                   item.true_label, target, info))
        save_mat_atomically(path, contents)
        print("saved to", path)
    sys.stdout.flush()


def make_executor(args, estimator):
    """The in-process executor, or the Ray one for --ray (the same run/close interface)."""
    if not args.ray:
        return LocalExecutor(args, estimator)
    from cleverscore.running.cluster import RayExecutor

    return RayExecutor(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    validate(args)
    quiet_tensorflow()
    if args.ray:
        from cleverscore.running.cluster import prepare_driver

        prepare_driver(args.ray)  # before TensorFlow loads: ray installed? keep the driver off the GPUs
    from cleverscore.mat_files import remove_stale_temp_files
    from cleverscore.models.user import check_outputs
    from cleverscore.sampling.estimator import EstimateLipschitz
    from cleverscore.sampling.shared_memory import remove_stale_segments

    print({k: v for k, v in vars(args).items() if k != "range"})
    remove_stale_segments()
    test_x, test_y, _ = load_inputs(args)
    estimator = EstimateLipschitz(seed=args.seed, nthreads=args.nthreads, sampler=args.sampler)
    load_classifier(args, estimator, test_x.shape[1:])
    images = select_images(args, len(test_x), None)
    try:
        logits = estimator.predict(test_x[[i for i, _ in images]])
    except Exception as err:  # noqa: BLE001 - a user model can raise anything; report it in one line
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        raise CleverError(f"the model failed on the input images: {type(err).__name__}: {first}") from err
    check_outputs(logits, None if args.model_path else (1000 if args.dataset == "imagenet" else 10), args.output)
    names = None
    if args.dataset == "imagenet":
        from cleverscore.data.imagenet import class_names

        names = class_names()
    num_classes = logits.shape[1]
    bad = [i for i, _ in images if not 0 <= test_y[i] < num_classes]
    if bad:
        raise UsageError(f"labels of images {bad[:5]} are outside 0..{num_classes - 1}")
    if args.ids and args.target_type & USER:
        select_images(args, len(test_x), num_classes)  # re-check --ids targets against the model's classes
    for (image_id, user_target) in images:
        if user_target is not None and user_target == test_y[image_id]:
            raise UsageError(f"--ids target {user_target} of image {image_id} equals its true class")
    folder = output_folder(args)
    for stale in remove_stale_temp_files(folder):
        print(f"[WARNING] removed {stale}, left by a run that was killed mid-write", file=sys.stderr)
    counters = {"total": 0, "start": time.time(), "failed": [],
                "args": {k: ("" if v is None else v) for k, v in vars(args).items() if k != "range"}}
    try:
        executor = make_executor(args, estimator)
        try:
            for outcome in executor.run(plan_items(args, test_x, test_y, images, logits, names, folder, counters)):
                save_outcome(args, estimator, outcome, counters)
        finally:
            executor.close()
    finally:
        estimator.close()
    if counters["failed"]:
        pairs = ", ".join(f"({i}, {'all' if t is None else t})" for i, t in counters["failed"])
        print(f"[WARNING] {len(counters['failed'])} (image, target) pair(s) stopped on NaN/Inf logits or gradients: "
              f"{pairs}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
