#!/usr/bin/env python3
"""Targeted attacks to compare CLEVER scores with: Carlini-Wagner L2 and I-FGSM (L2 and Linf).

Both attacks are batched over images and run as compiled TF2 loops. Each returns the adversarial
examples, their L2 and Linf distortions and success flags (the example is classified as the
target). An attack finds an upper bound on the minimum adversarial distortion; CLEVER estimates
that minimum, so on most images CLEVER is a little below what the attacks find.

Command line: the dataset/model/target flags of `collect_gradients.py` (the same seed picks the
same random targets), writing one CSV row per (image, target, attack):
    python3 attacks.py -d mnist -m normal -n 20 --target_type 7 --csv attacks/mnist_normal.csv
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cleverscore.cli.common import quiet_tensorflow, run_cli
from cleverscore.cli.flags import add_user_model_flags, check_user_model_flags, parse_input_range, user_model_from_args
from cleverscore.data.user import load_user_data
from cleverscore.errors import UsageError

# Carlini-Wagner L2, as in the reference implementation (abort early, Adam, tanh box) with
# 9 binary-search steps over the constant and 1000 Adam iterations per step.
CW_BINARY_STEPS = 9
CW_ITERATIONS = 1000
CW_LEARNING_RATE = 1e-2
CW_INITIAL_CONST = 1e-3
CW_MAX_CONST = 1e10
# I-FGSM: for each epsilon of a geometric grid (ascending), IFGSM_STEPS steps of size eps/steps,
# projected on the eps ball; the first iterate classified as the target is kept. With the grid
# ratio r below, the distortion found is at most r/steps (relative) above the epsilon needed.
IFGSM_STEPS = 100
IFGSM_GRID = {"l2": np.geomspace(1e-2, 20.0, 40), "li": np.geomspace(1e-3, 0.5, 40)}
ATTACKS = ("cw_l2", "ifgsm_l2", "ifgsm_li")


@dataclass
class AttackResult:
    """Per-image outcome of one attack on a batch.

    Attributes:
        adversarial: (B, ...) examples (the original image where the attack failed).
        success: (B,) bool, the example is classified as its target.
        l2, linf: (B,) distortions of the examples (inf where the attack failed).
    """

    adversarial: np.ndarray
    success: np.ndarray
    l2: np.ndarray
    linf: np.ndarray


def _distortions(x: np.ndarray, adv: np.ndarray, success: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    delta = (adv - x).reshape(len(x), -1).astype(np.float64)
    l2 = np.where(success, np.linalg.norm(delta, axis=1), np.inf)
    linf = np.where(success, np.abs(delta).max(axis=1), np.inf)
    return l2, linf


def _result(x: np.ndarray, best: np.ndarray, success: np.ndarray) -> AttackResult:
    adv = np.where(success.reshape((-1,) + (1,) * (x.ndim - 1)), best, x)
    l2, linf = _distortions(x, adv, success)
    return AttackResult(adv, success, l2, linf)


def _flat_sum(t):
    import tensorflow as tf

    return tf.reduce_sum(tf.reshape(t, [tf.shape(t)[0], -1]), axis=1)


def carlini_wagner_l2(logits_fn: Callable, x: np.ndarray, targets: np.ndarray, *,
                      binary_steps: int = CW_BINARY_STEPS, iterations: int = CW_ITERATIONS,
                      learning_rate: float = CW_LEARNING_RATE, initial_const: float = CW_INITIAL_CONST,
                      confidence: float = 0.0, box: tuple[float, float] = (-0.5, 0.5),
                      abort_early: bool = True) -> AttackResult:
    """Targeted CW L2 on a batch: minimise ||x' - x||^2 + c * max(max_{j != t} Z_j - Z_t, -confidence).

    x' = tanh(w) scaled to `box`; Adam on w; per image, a binary search on c keeps the smallest
    successful distortion. Iterations stop early when the loss stops falling (checked 10 times).
    """
    import tensorflow as tf

    x = np.asarray(x, np.float32)
    lo, hi = box
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    w0 = np.arctanh(np.clip((x - mid) / half, -1 + 1e-6, 1 - 1e-6)).astype(np.float32)
    t = tf.constant(targets, tf.int32)
    num_classes = int(logits_fn(tf.constant(x[:1])).shape[-1])
    onehot = tf.one_hot(t, num_classes)
    x_t = tf.constant(x)
    chunk = max(iterations // 10, 1)

    @tf.function
    def run_chunk(w, m, v, step, const, best_l2, best_adv):
        def body(k, w, m, v, step, best_l2, best_adv, loss_sum):
            with tf.GradientTape() as tape:
                tape.watch(w)
                adv = tf.tanh(w) * half + mid
                logits = logits_fn(adv)
                target_logit = tf.reduce_sum(onehot * logits, 1)
                other = tf.reduce_max(logits - 1e9 * onehot, 1)
                l2sq = _flat_sum(tf.square(adv - x_t))
                loss_each = l2sq + const * tf.maximum(other - target_logit, -confidence)
                loss = tf.reduce_sum(loss_each)
            grad = tape.gradient(loss, w)
            success = tf.logical_and(tf.argmax(logits, 1, output_type=tf.int32) == t, other - target_logit <= -confidence)
            better = tf.logical_and(success, l2sq < best_l2)
            best_l2 = tf.where(better, l2sq, best_l2)
            best_adv = tf.where(tf.reshape(better, [-1] + [1] * (len(x.shape) - 1)), adv, best_adv)
            step = step + 1.0
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * tf.square(grad)
            decay = tf.maximum(1.0 - step / iterations, 0.01)  # fine steps at the end find the boundary
            lr = learning_rate * decay * tf.sqrt(1 - 0.999 ** step) / (1 - 0.9 ** step)
            w = w - lr * m / (tf.sqrt(v) + 1e-8)
            return k + 1, w, m, v, step, best_l2, best_adv, loss
        out = tf.while_loop(lambda k, *_: k < chunk, body,
                            (tf.constant(0), w, m, v, step, best_l2, best_adv, tf.constant(0.0)))
        return out[1:]

    n = len(x)
    lower = np.zeros(n)
    upper = np.full(n, CW_MAX_CONST)
    const = np.full(n, initial_const)
    best_l2 = np.full(n, np.inf, np.float32)
    best_adv = x.copy()
    for _ in range(binary_steps):
        w = tf.constant(w0)
        m = tf.zeros_like(w)
        v = tf.zeros_like(w)
        step = tf.constant(0.0)
        round_l2 = tf.constant(np.full(n, np.inf, np.float32))
        round_adv = tf.constant(x)
        previous = np.inf
        c_t = tf.constant(const, tf.float32)
        for _ in range(math.ceil(iterations / chunk)):
            w, m, v, step, round_l2, round_adv, loss = run_chunk(w, m, v, step, c_t, round_l2, round_adv)
            loss = float(loss)
            if abort_early and loss > previous * 0.9999:
                break
            previous = loss
        round_l2, round_adv = round_l2.numpy(), round_adv.numpy()
        improve = np.isfinite(round_l2) & (round_l2 < best_l2)
        best_l2[improve] = round_l2[improve]
        best_adv[improve] = round_adv[improve]
        # The search on c follows where the optimisation ended, not every iterate it passed:
        # Adam's first, sign-like steps can cross a near boundary even when c is far too small,
        # and lowering c on such a crossing would keep the search from the boundary.
        found = classified_as(logits_fn, (np.tanh(w.numpy()) * half + mid).astype(np.float32), targets)
        upper = np.where(found, np.minimum(upper, const), upper)
        lower = np.where(found, lower, np.maximum(lower, const))
        const = np.where(upper < CW_MAX_CONST / 10, (lower + upper) / 2, const * 10)
    success = np.isfinite(best_l2)
    return _result(x, best_adv, success & classified_as(logits_fn, best_adv, targets))


def classified_as(logits_fn: Callable, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Whether each example's top logit is its target (re-checked on the returned float32 arrays)."""
    import tensorflow as tf

    return np.argmax(np.asarray(logits_fn(tf.constant(x, tf.float32))), axis=1) == np.asarray(targets)


def ifgsm(logits_fn: Callable, x: np.ndarray, targets: np.ndarray, norm: str, *,
          grid: np.ndarray | None = None, steps: int = IFGSM_STEPS,
          box: tuple[float, float] = (-0.5, 0.5)) -> AttackResult:
    """Targeted iterative FGSM in L2 (`norm='l2'`) or Linf (`'li'`) with the best epsilon of a grid.

    For each epsilon (ascending) the images not yet fooled take `steps` steps of size eps/steps
    down the target's cross-entropy (normalised gradient for L2, its sign for Linf), projected on
    the eps ball and the box; the first iterate classified as the target is the result.
    """
    import tensorflow as tf

    if norm not in IFGSM_GRID:
        raise UsageError(f"I-FGSM norm must be l2 or li, got {norm!r}")
    grid = IFGSM_GRID[norm] if grid is None else np.asarray(grid)
    x = np.asarray(x, np.float32)
    rank = x.ndim
    expand = lambda s: tf.reshape(s, [-1] + [1] * (rank - 1))

    @tf.function(input_signature=[tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([], tf.float32)])
    def attack(x0, t, eps):
        size = eps / steps

        def body(k, xk, found, best):
            with tf.GradientTape() as tape:
                tape.watch(xk)
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(t, logits_fn(xk)))
            grad = tape.gradient(loss, xk)
            if norm == "l2":
                norms = tf.norm(tf.reshape(grad, [tf.shape(grad)[0], -1]), axis=1)
                direction = grad / expand(tf.maximum(norms, 1e-12))
            else:
                direction = tf.sign(grad)
            xk = xk - size * direction
            delta = xk - x0
            if norm == "l2":
                dn = tf.norm(tf.reshape(delta, [tf.shape(delta)[0], -1]), axis=1)
                delta = delta * expand(tf.minimum(1.0, eps / tf.maximum(dn, 1e-12)))
            else:
                delta = tf.clip_by_value(delta, -eps, eps)
            xk = tf.clip_by_value(x0 + delta, *box)
            hit = tf.logical_and(tf.logical_not(found), tf.argmax(logits_fn(xk), 1, output_type=tf.int32) == t)
            best = tf.where(expand(hit), xk, best)
            return k + 1, xk, tf.logical_or(found, hit), best

        found = tf.zeros(tf.shape(t), tf.bool)
        _, _, found, best = tf.while_loop(
            lambda k, _x, f, _b: tf.logical_and(k < steps, tf.logical_not(tf.reduce_all(f))),
            body, (tf.constant(0), x0, found, x0))
        return found, best

    success = np.zeros(len(x), bool)
    best = x.copy()
    for eps in grid:
        todo = np.flatnonzero(~success)
        if not len(todo):
            break
        found, adv = attack(tf.constant(x[todo]), tf.constant(targets[todo], tf.int32), tf.constant(eps, tf.float32))
        found = found.numpy()
        best[todo[found]] = adv.numpy()[found]
        success[todo[found]] = True
    return _result(x, best, success & classified_as(logits_fn, best, targets))


def run_attack(name: str, logits_fn: Callable, x: np.ndarray, targets: np.ndarray, **options) -> AttackResult:
    """One of ATTACKS by name."""
    if name == "cw_l2":
        return carlini_wagner_l2(logits_fn, x, targets, **options)
    if name in ("ifgsm_l2", "ifgsm_li"):
        return ifgsm(logits_fn, x, targets, name.split("_")[1], **options)
    raise UsageError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")


# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", choices=["mnist", "cifar"], default="mnist")
    p.add_argument("-m", "--model_name", default="normal", help="2-layer, normal, distilled, brelu, or N,M,tag")
    p.add_argument("--activation", default="relu")
    p.add_argument("-n", "--numimg", type=int, default=1, help="number of test images")
    p.add_argument("-f", "--firstimg", type=int, default=0, help="first test image (or first row of --ids)")
    p.add_argument("--ids", default="", help="tab-separated file with an 'id' column, as collect_gradients.py")
    p.add_argument("--target_type", type=int, default=7, help="bit mask: 1 top-2, 2 random, 4 least likely")
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, from {', '.join(ATTACKS)}")
    p.add_argument("--csv", required=True, help="output CSV (one row per image, target and attack)")
    p.add_argument("-b", "--batch_size", type=int, default=64, help="images attacked together")
    p.add_argument("--cw_binary_steps", type=int, default=CW_BINARY_STEPS)
    p.add_argument("--cw_iterations", type=int, default=CW_ITERATIONS)
    p.add_argument("--ifgsm_steps", type=int, default=IFGSM_STEPS)
    p.add_argument("--seed", type=int, default=1215, help="picks the random target, as collect_gradients.py")
    p.add_argument("--data_dir", default=None, help="dataset folder (else CLEVER_DATA_DIR, else ./data)")
    add_user_model_flags(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def attack_options(name: str, args: argparse.Namespace) -> dict:
    if name == "cw_l2":
        return {"binary_steps": args.cw_binary_steps, "iterations": args.cw_iterations, "box": args.range}
    return {"steps": args.ifgsm_steps, "box": args.range}


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
    args.range = parse_input_range(args.input_range)
    check_user_model_flags(args)
    return names


def load_model_and_data(args) -> tuple[Callable, np.ndarray, np.ndarray]:
    """(logits function, images, integer labels): a built-in model and dataset, or --model_path/--data_path."""
    if args.data_path:
        x, y = load_user_data(args.data_path, args.range)
    else:
        from cleverscore.data import load_dataset

        data = load_dataset(args.dataset, args.data_dir)
        x, y = data.test_data, np.argmax(data.test_labels, axis=1)
    if args.model_path:
        model, _ = user_model_from_args(args, x.shape[1:])
    else:
        from cleverscore.models.zoo import load_zoo_model

        model = load_zoo_model(args.dataset, args.model_name, args.activation)
    return model, x, y


def predict(logits_fn: Callable, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import tensorflow as tf

    return np.concatenate([np.asarray(logits_fn(tf.constant(x[i:i + batch], tf.float32)))
                           for i in range(0, len(x), batch)])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = validate(args)
    quiet_tensorflow()
    import pandas as pd

    from cleverscore.cli.collect import select_images
    from cleverscore.mat_files import write_atomically
    from cleverscore.running.targets import choose_targets

    model, test_x, test_y = load_model_and_data(args)
    ids = [image_id for image_id, _ in select_images(args, len(test_x), None)]
    x_all = test_x[ids]
    labels = test_y[ids]
    logits = predict(model, x_all)
    pairs = []  # (row in x_all, image id, true label, target, info)
    for row, (image_id, pred, label) in enumerate(zip(ids, logits, labels)):
        if int(np.argmax(pred)) != label:
            print(f"[WARNING] image {image_id} is misclassified (true {label}, predicted {np.argmax(pred)}); skipping")
            continue
        for target, info in choose_targets(pred, args.target_type, args.seed, image_id):
            pairs.append((row, image_id, int(label), target, info))
    rows = []
    for name in names:
        for start in range(0, len(pairs), args.batch_size):
            batch = pairs[start:start + args.batch_size]
            x = x_all[[p[0] for p in batch]]
            targets = np.array([p[3] for p in batch])
            res = run_attack(name, model, x, targets, **attack_options(name, args))
            for (_, image_id, label, target, info), ok, l2, li in zip(batch, res.success, res.l2, res.linf):
                rows.append({"id": image_id, "true_label": label, "target_label": target, "info": info,
                             "attack": name, "success": bool(ok), "l2": float(l2), "linf": float(li)})
            done = sum(res.success)
            print(f"[ATTACK] {name}: images {batch[0][1]}..{batch[-1][1]}, {done}/{len(batch)} succeeded, "
                  f"mean L2 {np.mean(res.l2[res.success]) if done else float('nan'):.5g}")
            sys.stdout.flush()
    write_atomically(args.csv, lambda path: pd.DataFrame(rows).to_csv(path, index=False))
    print(f"[ATTACK] wrote {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    run_cli(main)
