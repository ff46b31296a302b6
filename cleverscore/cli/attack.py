"""attacks.py: targeted attacks on test images, one CSV row per (image, target, attack).

The dataset/model/target flags of collect_gradients.py (the same seed picks the same random
targets):
    python3 attacks.py -d mnist -m normal -n 20 --target_type 7 --csv attacks/mnist_normal.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np

from cleverscore.attacks import ATTACKS, CW_BINARY_STEPS, CW_ITERATIONS, IFGSM_STEPS, run_attack
from cleverscore.cli.common import Parser, flag_names, flags_named, quiet_tensorflow, run_cli
from cleverscore.cli.flags import add_user_model_flags, check_user_model_flags, data_settings, model_settings
from cleverscore.errors import UsageError
from cleverscore.locations import program_name
from cleverscore.mat_files import check_writable_file


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=program_name("attacks.py", __name__), description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", choices=["mnist", "cifar"], default="mnist")
    p.add_argument("-m", "--model_name", default="normal", help="2-layer, normal, distilled, brelu, or N,M,tag")
    p.add_argument("--activation", default="relu")
    p.add_argument("-n", "--numimg", type=int, default=1, help="number of test images")
    p.add_argument("-f", "--firstimg", type=int, default=0, help="first test image (or first row of --ids)")
    p.add_argument("--ids", default="", help="tab-separated file with an 'id' column, as collect_gradients.py")
    p.add_argument("--target_type", type=int, default=7, help="bit mask: 1 top-2, 2 random, 4 least likely")
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, from {', '.join(ATTACKS)}")
    p.add_argument("--csv", required=True, help="output CSV (one row per image, target and attack)")
    p.add_argument("--save_adv", default="", metavar="FILE.npz",
                   help="also save the adversarial images, one per CSV row (adv, id, true_label, target_label, info, "
                        "attack, success, l2, linf), NHWC in input units, to check them in another framework")
    p.add_argument("-b", "--batch_size", type=int, default=64, help="images attacked together")
    p.add_argument("--cw_binary_steps", type=int, default=CW_BINARY_STEPS)
    p.add_argument("--cw_iterations", type=int, default=CW_ITERATIONS)
    p.add_argument("--ifgsm_steps", type=int, default=IFGSM_STEPS)
    p.add_argument("--seed", type=int, default=1215, help="picks the random target, as collect_gradients.py")
    p.add_argument("--data_dir", default=None, help="dataset folder (else CLEVER_DATA_DIR, else ./data)")
    add_user_model_flags(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def attack_options(name: str, args: argparse.Namespace, box: tuple[float, float]) -> dict:
    if name == "cw_l2":
        return {"binary_steps": args.cw_binary_steps, "iterations": args.cw_iterations, "box": box}
    return {"steps": args.ifgsm_steps, "box": box}


def validate(args: argparse.Namespace) -> list[str]:
    names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown or not names:
        raise UsageError(f"unknown attack(s) {unknown}; choose from {', '.join(ATTACKS)}")
    if args.target_type & ~7 or not args.target_type:
        raise UsageError("--target_type for attacks is a mask of 1 (top-2), 2 (random) and 4 (least likely)")
    for flag in ("numimg", "batch_size", "cw_binary_steps", "cw_iterations", "ifgsm_steps"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be positive")
    if args.firstimg < 0:
        raise UsageError("--firstimg must be >= 0")
    check_user_model_flags(args)
    check_writable_file(args.csv, "--csv")
    if args.save_adv:
        if not args.save_adv.endswith(".npz"):
            raise UsageError(f"--save_adv must name an .npz file, got {args.save_adv!r}")
        check_writable_file(args.save_adv, "--save_adv")
    return names


def load_model_and_data(model, data) -> tuple[Callable, np.ndarray, np.ndarray]:
    """(logits function, images, integer labels): a built-in model and dataset, or a user's model and data."""
    if data.data_path:
        from cleverscore.data.user import load_user_data

        x, y = load_user_data(str(data.data_path), model.input_range)
    else:
        from cleverscore.data import load_dataset

        dataset = load_dataset(model.dataset, data.data_dir)
        x, y = dataset.test_data, np.argmax(dataset.test_labels, axis=1)
    if model.model_path:
        from cleverscore.models.user import prepared_user_model

        return prepared_user_model(model, x.shape[1:]), x, y
    from cleverscore.models.zoo import load_zoo_model

    return load_zoo_model(model.dataset, model.model_name, model.activation), x, y


def predict(logits_fn: Callable, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import tensorflow as tf

    return np.concatenate([np.asarray(logits_fn(tf.constant(x[i:i + batch], tf.float32)))
                           for i in range(0, len(x), batch)])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = validate(args)
    quiet_tensorflow(args.debug)
    with flags_named(flag_names(parser)):
        return attack_images(args, names)


def attack_images(args: argparse.Namespace, names: list[str]) -> int:
    """Attack every (image, target) of the run with each named attack; write the CSV."""
    import pandas as pd

    from cleverscore.mat_files import write_atomically, write_failures_reported
    from cleverscore.models.user import check_image_shape
    from cleverscore.running.plan import require_some_correct, select_images
    from cleverscore.running.targets import choose_targets

    model_spec, data_spec = model_settings(args), data_settings(args)
    model, test_x, test_y = load_model_and_data(model_spec, data_spec)
    check_image_shape(model, test_x.shape[1:])
    ids = [image_id for image_id, _ in select_images(data_spec, len(test_x), None)]
    x_all = test_x[ids]
    labels = test_y[ids]
    logits = predict(model, x_all)
    require_some_correct(logits, labels, model_spec)
    pairs = []  # (row in x_all, image id, true label, target, info)
    for row, (image_id, pred, label) in enumerate(zip(ids, logits, labels)):
        if int(np.argmax(pred)) != label:
            print(f"[WARNING] image {image_id} is misclassified (true {label}, predicted {np.argmax(pred)}); skipping")
            continue
        for target, info in choose_targets(pred, args.target_type, args.seed, image_id):
            pairs.append((row, image_id, int(label), target, info))
    rows, adversarial = [], []
    for name in names:
        for start in range(0, len(pairs), args.batch_size):
            batch = pairs[start:start + args.batch_size]
            x = x_all[[p[0] for p in batch]]
            targets = np.array([p[3] for p in batch])
            res = run_attack(name, model, x, targets, **attack_options(name, args, model_spec.input_range))
            for (_, image_id, label, target, info), ok, l2, li in zip(batch, res.success, res.l2, res.linf):
                rows.append({"id": image_id, "true_label": label, "target_label": target, "info": info,
                             "attack": name, "success": bool(ok), "l2": float(l2), "linf": float(li)})
            adversarial.append(np.asarray(res.adversarial, np.float32))
            done = sum(res.success)
            print(f"[ATTACK] {name}: images {batch[0][1]}..{batch[-1][1]}, {done}/{len(batch)} succeeded, "
                  f"mean L2 {np.mean(res.l2[res.success]) if done else float('nan'):.5g}")
            sys.stdout.flush()
    with write_failures_reported(args.csv):
        write_atomically(args.csv, lambda path: pd.DataFrame(rows).to_csv(path, index=False))
    print(f"[ATTACK] wrote {len(rows)} rows to {args.csv}")
    if args.save_adv:
        with write_failures_reported(args.save_adv):
            save_adversarial(args.save_adv, rows, adversarial, x_all.shape[1:])
        print(f"[ATTACK] wrote {len(rows)} adversarial images to {args.save_adv}")
    return 0


def save_adversarial(path: str, rows: list[dict], images: list[np.ndarray], image_shape: tuple[int, ...]) -> None:
    """--save_adv: the adversarial images with the CSV's columns, one entry per row, written atomically.

    A failed attack's entry is the original image (success False, distortions inf), as in the CSV.
    Strings are saved as unicode arrays, so `np.load` needs no pickles."""
    from cleverscore.mat_files import write_atomically

    adv = np.concatenate(images) if images else np.zeros((0, *image_shape), np.float32)
    columns = {key: np.array([r[key] for r in rows]) for key in
               ("id", "true_label", "target_label", "info", "attack", "success", "l2", "linf")} if rows else {}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a temporary name
            np.savez(f, adv=adv, **columns)

    write_atomically(path, write)


def console_main() -> None:
    """The installed console command (pyproject.toml): flags from sys.argv, exit code on the way out."""
    run_cli(main)


if __name__ == "__main__":
    console_main()
