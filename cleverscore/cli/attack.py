"""attacks.py: attacks on test images, one CSV row per (image, target, attack).

The dataset/model/target flags of collect_gradients.py (the same seed picks the same random
targets; 8 takes the targets of an --ids file, 16 adds an untargeted attack per image):
    python3 attacks.py -d mnist -m normal -n 20 --target_type 5 --attacks pgd_li,fab_li,ddn_l2,best \\
        --csv attacks/mnist_normal.csv
`best` adds a row per (image, target) with the smallest distortion per norm over the attacks run
(`--attacks best` alone runs the strongest attacks of every norm first).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from cleverscore.attacks import (
    ATTACKS,
    BEST,
    CW_BINARY_STEPS,
    CW_ITERATIONS,
    DDN_GAMMA,
    DDN_STEPS,
    FAB_ITERATIONS,
    FAB_RESTARTS,
    IFGSM_STEPS,
    NOISE_DIRECTIONS,
    PGD_ITERATIONS,
    PGD_RESTARTS,
    PGD_ROUNDS,
    STRONGEST,
)
from cleverscore.cli.common import Parser, flag_names, flags_named, number, quiet_tensorflow, run_cli
from cleverscore.cli.flags import (
    add_user_model_flags,
    check_transform,
    check_user_model_flags,
    data_settings,
    model_settings,
)
from cleverscore.errors import UsageError
from cleverscore.locations import program_name
from cleverscore.mat_files import check_writable_file
from cleverscore.norms import L1, L2, LINF
from cleverscore.sampling.transforms import TRANSFORMS

# What runs without --attacks: the paper's three, the strongest Linf and L2 attacks, and best.
DEFAULT_ATTACKS = ("cw_l2", "ifgsm_l2", "ifgsm_li", "pgd_li", "fab_li", "ddn_l2", "fab_l2", BEST)
UNTARGETED_INFO = "untargeted"
UNTARGETED_BIT = 16
COLUMNS = ["id", "true_label", "target_label", "info", "attack", "success", "l2", "linf", "l1", "seconds", "best_of"]
BUDGET_FLAGS = ("numimg", "batch_size", "cw_binary_steps", "cw_iterations", "ifgsm_steps", "pgd_iterations",
                "pgd_restarts", "pgd_rounds", "fab_iterations", "fab_restarts", "ddn_steps", "noise_directions")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=program_name("attacks.py", __name__), description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", choices=["mnist", "cifar"], default="mnist")
    p.add_argument("-m", "--model_name", default="normal", help="2-layer, normal, distilled, brelu, adv_EPS, or N,M,tag")
    p.add_argument("--activation", default="relu")
    p.add_argument("-n", "--numimg", type=int, default=1, help="number of test images")
    p.add_argument("-f", "--firstimg", type=int, default=0, help="first test image (or first row of --ids)")
    p.add_argument("--ids", default="", help="tab-separated file with an 'id' column (and 'target' for bit 8), "
                   "as collect_gradients.py")
    p.add_argument("--target_type", type=int, default=7,
                   help="bit mask: 1 top-2, 2 random, 4 least likely, 8 --ids targets, 16 untargeted")
    p.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                   help=f"comma-separated, from {', '.join(ATTACKS)} and {BEST}")
    p.add_argument("--transform", default="",
                   help=f"attack the model behind this input transformation, through BPDA (as collect_gradients.py "
                        f"--transform): one of {', '.join(TRANSFORMS)}")
    p.add_argument("--csv", required=True, help="output CSV (one row per image, target and attack)")
    p.add_argument("--save_adv", default="", metavar="FILE.npz",
                   help="also save the adversarial images, one per attack row (adv, id, true_label, target_label, "
                        "info, attack, success, l2, linf, l1), NHWC in input units, to check them in another framework")
    p.add_argument("-b", "--batch_size", type=int, default=64, help="(image, target) pairs attacked together")
    p.add_argument("--cw_binary_steps", type=int, default=CW_BINARY_STEPS)
    p.add_argument("--cw_iterations", type=int, default=CW_ITERATIONS)
    p.add_argument("--ifgsm_steps", type=int, default=IFGSM_STEPS)
    p.add_argument("--pgd_iterations", type=int, default=PGD_ITERATIONS, help="APGD steps per eps and restart")
    p.add_argument("--pgd_restarts", type=int, default=PGD_RESTARTS, help="parallel descents per eps")
    p.add_argument("--pgd_rounds", type=int, default=PGD_ROUNDS, help="eps values tried per pair")
    p.add_argument("--fab_iterations", type=int, default=FAB_ITERATIONS)
    p.add_argument("--fab_restarts", type=int, default=FAB_RESTARTS)
    p.add_argument("--ddn_steps", type=int, default=DDN_STEPS)
    p.add_argument("--ddn_gamma", type=number(above=0, below=1), default=DDN_GAMMA,
                   help="DDN's relative change of the norm per step")
    p.add_argument("--noise_directions", type=int, default=NOISE_DIRECTIONS, help="random rays per pair")
    p.add_argument("--seed", type=int, default=1215, help="picks the random target, as collect_gradients.py, "
                   "and the attacks' random starts")
    p.add_argument("--data_dir", default=None, help="dataset folder (else CLEVER_DATA_DIR, else ./data)")
    add_user_model_flags(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def attack_names(text: str) -> tuple[list[str], bool]:
    """(attacks to run, whether best rows are wanted) from --attacks; `best` alone runs STRONGEST."""
    names = list(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    unknown = [a for a in names if a not in ATTACKS and a != BEST]
    if unknown or not names:
        raise UsageError(f"unknown attack(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(ATTACKS)}, {BEST}")
    wanted = BEST in names
    run = [a for a in names if a != BEST]
    if not run:
        run = [name for norm in (LINF, L2, L1) for name in STRONGEST[norm]]
    return run, wanted


def validate(args: argparse.Namespace) -> tuple[list[str], bool]:
    names = attack_names(args.attacks)
    if args.target_type & ~31 or not args.target_type:
        raise UsageError("--target_type for attacks is a mask of 1 (top-2), 2 (random), 4 (least likely), "
                         "8 (--ids targets) and 16 (untargeted)")
    if args.target_type & 8 and not args.ids:
        raise UsageError("--target_type bit 8 takes the targets of an --ids file; give --ids")
    for flag in BUDGET_FLAGS:
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.firstimg < 0:
        raise UsageError("--firstimg must be >= 0")
    check_transform(args.transform)
    check_user_model_flags(args)
    check_writable_file(args.csv, "--csv")
    if args.save_adv:
        if not args.save_adv.endswith(".npz"):
            raise UsageError(f"--save_adv must name an .npz file, got {args.save_adv!r}")
        check_writable_file(args.save_adv, "--save_adv")
    return names


def attack_settings(args: argparse.Namespace, box: tuple[float, float]):
    """The budget flags as the library's settings object."""
    from cleverscore.attacks import AttackSettings

    return AttackSettings(cw_binary_steps=args.cw_binary_steps, cw_iterations=args.cw_iterations,
                          ifgsm_steps=args.ifgsm_steps, pgd_iterations=args.pgd_iterations,
                          pgd_restarts=args.pgd_restarts, pgd_rounds=args.pgd_rounds,
                          fab_iterations=args.fab_iterations, fab_restarts=args.fab_restarts,
                          ddn_steps=args.ddn_steps, ddn_gamma=args.ddn_gamma,
                          noise_directions=args.noise_directions, box=tuple(box), seed=args.seed)


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names, best = validate(args)
    quiet_tensorflow(args.debug)
    with flags_named(flag_names(parser)):
        return attack_images(args, names, best)


def attack_pairs(args: argparse.Namespace, data_spec, ids: list[tuple[int, int | None]], logits: np.ndarray,
                 labels: np.ndarray) -> list[tuple[int, int, int, int, str]]:
    """(row, image id, true label, target or -1, info) per pair to attack; misclassified images are skipped."""
    from cleverscore.running.targets import choose_targets

    pairs = []
    for row, ((image_id, user_target), pred, label) in enumerate(zip(ids, logits, labels)):
        if int(np.argmax(pred)) != label:
            print(f"[WARNING] image {image_id} is misclassified (true {label}, predicted {np.argmax(pred)}); skipping")
            continue
        chosen = choose_targets(pred, data_spec.target_type & ~UNTARGETED_BIT, args.seed, image_id, user_target)
        pairs += [(row, image_id, int(label), target, info) for target, info in chosen]
        if data_spec.target_type & UNTARGETED_BIT:
            pairs.append((row, image_id, int(label), -1, UNTARGETED_INFO))
    return pairs


def batches(pairs: list, size: int) -> list[list]:
    """Pairs in batches of at most `size`, targeted and untargeted ones apart (one criterion per batch)."""
    out = []
    for kind in (False, True):
        chosen = [p for p in pairs if (p[4] == UNTARGETED_INFO) == kind]
        out += [chosen[i:i + size] for i in range(0, len(chosen), size)]
    return out


def attack_images(args: argparse.Namespace, names: list[str], want_best: bool) -> int:
    """Attack every (image, target) of the run with each named attack; write the CSV."""
    import pandas as pd

    from cleverscore.attacks import best_of, masking_counts, predict, run_attack, targeted, untargeted
    from cleverscore.mat_files import write_atomically, write_failures_reported
    from cleverscore.models.user import check_image_shape
    from cleverscore.running.plan import require_some_correct, select_images

    model_spec, data_spec = model_settings(args), data_settings(args)
    model, test_x, test_y = load_model_and_data(model_spec, data_spec)
    check_image_shape(model, test_x.shape[1:])
    if args.transform:  # the defended model: predictions, attacks and every check go through it
        from cleverscore.attacks.bpda import bpda_logits

        model = bpda_logits(model, args.transform, tuple(model_spec.input_range))
    settings = attack_settings(args, model_spec.input_range)
    ids = select_images(data_spec, len(test_x), None)
    x_all, labels = test_x[[i for i, _ in ids]], test_y[[i for i, _ in ids]]
    logits = predict(model, x_all)
    require_some_correct(logits, labels, model_spec)
    pairs = attack_pairs(args, data_spec, ids, logits, labels)
    rows: dict[str, list[dict]] = defaultdict(list)
    adversarial: dict[str, list[np.ndarray]] = defaultdict(list)
    masking: dict = defaultdict(lambda: [0, 0])
    for batch in batches(pairs, args.batch_size):
        x = x_all[[p[0] for p in batch]]
        untargeted_batch = batch[0][4] == UNTARGETED_INFO
        criterion = untargeted([p[2] for p in batch]) if untargeted_batch else targeted([p[3] for p in batch])
        results, seconds = {}, {}
        for name in names:
            begin = time.perf_counter()
            results[name] = run_attack(name, model, x, criterion, settings)
            seconds[name] = (time.perf_counter() - begin) / len(batch)
            res = results[name]
            rows[name] += [pair_row(p, name, res.success[k], res.l2[k], res.linf[k], res.l1[k], seconds[name])
                           for k, p in enumerate(batch)]
            adversarial[name].append(np.asarray(res.adversarial, np.float32))
            print(attack_line(name, batch, res, seconds[name]))
            sys.stdout.flush()
        if want_best:
            best = best_of(results)
            total = sum(seconds.values())
            rows[BEST] += [pair_row(p, BEST, best.success[k], best.distortion[L2][k], best.distortion[LINF][k],
                                    best.distortion[L1][k], total, best_sources(best, k))
                           for k, p in enumerate(batch)]
        for norm, (beaten, count) in masking_counts(results).items():
            masking[norm.label][0] += beaten
            masking[norm.label][1] += count
    table = [r for name in [*names, BEST] for r in rows.get(name, [])]
    for line in summary_lines(table) + masking_lines(masking):
        print(line)
    with write_failures_reported(args.csv):
        write_atomically(args.csv, lambda path: pd.DataFrame(table, columns=COLUMNS).to_csv(path, index=False))
    print(f"[ATTACK] wrote {len(table)} rows to {args.csv}")
    if args.save_adv:
        kept = [r for name in names for r in rows[name]]
        images = [image for name in names for image in adversarial[name]]
        with write_failures_reported(args.save_adv):
            save_adversarial(args.save_adv, kept, images, x_all.shape[1:])
        print(f"[ATTACK] wrote {len(kept)} adversarial images to {args.save_adv}")
    return 0


def pair_row(pair: tuple, attack: str, success, l2, linf, l1, seconds: float, best_of: str = "") -> dict:
    _, image_id, label, target, info = pair
    return {"id": image_id, "true_label": label, "target_label": target, "info": info, "attack": attack,
            "success": bool(success), "l2": float(l2), "linf": float(linf), "l1": float(l1),
            "seconds": round(float(seconds), 4), "best_of": best_of}


def best_sources(best, k: int) -> str:
    """Which attack gave each norm's distortion of pair k: `l1=fab_l1 l2=ddn_l2 linf=pgd_li`."""
    return " ".join(f"{name}={best.source[norm][k]}" for name, norm in (("l1", L1), ("l2", L2), ("linf", LINF))
                    if best.source[norm][k])


def attack_line(name: str, batch: list, res, seconds: float) -> str:
    done = int(np.sum(res.success))
    norm = ATTACKS[name].norm
    found = res.distortion(norm)[res.success]
    return (f"[ATTACK] {name}: images {batch[0][1]}..{batch[-1][1]}, {done}/{len(batch)} succeeded, "
            f"mean {norm.label} {np.mean(found) if done else float('nan'):.5g}, {seconds:.3g} s per pair")


def summary_lines(table: list[dict]) -> list[str]:
    """Per attack and target type: successes (failures are counted, never dropped), medians, time per pair."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in table:
        groups[(r["attack"], r["info"])].append(r)
    lines = []
    for (attack, info), members in groups.items():
        ok = [r for r in members if r["success"]]

        def median(key: str, ok: list[dict] = ok) -> float:
            return float(np.median([r[key] for r in ok])) if ok else float("nan")

        lines.append(f"[ATTACK][SUMMARY] attack = {attack}, info = {info}, succeeded = {len(ok)}/{len(members)}, "
                     f"median_l1 = {median('l1'):.5g}, median_l2 = {median('l2'):.5g}, "
                     f"median_linf = {median('linf'):.5g}, seconds_per_pair = "
                     f"{np.mean([r['seconds'] for r in members]):.3g}")
    return lines


def masking_lines(masking: dict) -> list[str]:
    """The gradient-masking check: pairs where a gradient-free attack beat every gradient attack."""
    return [f"[ATTACK][MASKING] norm = {label}, gradient-free closer on {beaten}/{count} pairs "
            f"({100.0 * beaten / max(count, 1):.1f}%)" for label, (beaten, count) in masking.items()]


def save_adversarial(path: str, rows: list[dict], images: list[np.ndarray], image_shape: tuple[int, ...]) -> None:
    """--save_adv: the adversarial images with the CSV's columns, one entry per attack row, written atomically.

    A failed attack's entry is the original image (success False, distortions inf), as in the CSV;
    `best` rows have no entry (each of their distortions is some attack row's). Strings are saved
    as unicode arrays, so `np.load` needs no pickles."""
    from cleverscore.mat_files import write_atomically

    adv = np.concatenate(images) if images else np.zeros((0, *image_shape), np.float32)
    columns = {key: np.array([r[key] for r in rows]) for key in
               ("id", "true_label", "target_label", "info", "attack", "success", "l2", "linf", "l1")} if rows else {}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a temporary name
            np.savez(f, adv=adv, **columns)

    write_atomically(path, write)


def console_main() -> None:
    """The installed console command (pyproject.toml): flags from sys.argv, exit code on the way out."""
    run_cli(main)


if __name__ == "__main__":
    console_main()
