#!/usr/bin/env python3
"""The attack side of the bracket, measured: how close the attacks come to eps*, and at what cost.

    python3 bench/attacks.py --part mlp --out bench/results/attacks     # vs exact eps* (MILP), ~1 h
    python3 bench/attacks.py --part cnn --out bench/results/attacks     # MNIST CNN, via attacks.py

`mlp`: the shipped 784-32-32-10 and 784-64-64-10 MLPs, the first `--images` MNIST test images,
their top-2 and least-likely targets. Every attack of MLP_ATTACKS runs on all pairs (batched,
timed); then the MILP (`minimal_distortion`) searches eps* in Linf and L1 inside the best attack's
distortion, with `--time_limit` seconds per problem, for the target type:norm combinations of
`--solve`. Its problem is the attacks' own: the target must beat every class (`target_wins`), not
only the true one as in `--exact`'s pairwise eps*, which can lie below it (mlp32 image 3 -> 7:
pairwise 0.0722, the target winning between 0.0722 and 0.0729). Where it proves eps*, each
attack's distortion / eps* is reported (median and worst), with I-FGSM's as the baseline; where it
stays open but the pairwise eps* is proven (cached in `--out/exact`), that lower bound stands in,
and the ratio is an upper bound. MILP answers are cached as JSON in `--out/exact_wins`, so a rerun
only reruns the attacks.

`cnn`: the shipped MNIST CNN, the first `--cnn_images` test images, top-2 and least likely,
through `attacks.py` (as a user runs it; one batch, TF_NUM_INTRAOP_THREADS=1 recommended). The
median distortion of `best` against I-FGSM's (Linf) and CW's (L2), per pair and of the medians,
success per attack and target type, the seconds per pair, and the gradient-masking check.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cleverscore.norms import L1, LINF  # noqa: E402

MLPS = {"784-32-32-10": "3,32,relu", "784-64-64-10": "3,64,relu"}
TARGETS = 5  # top-2 and least likely
SEED = 1215  # attacks.py's default: the same random starts
# A proven pairwise eps* (`exact/`) within this relative distance of an upper bound settles eps*.
PAIRWISE_ENOUGH = 1e-4
MLP_ATTACKS = ("ifgsm_li", "pgd_li", "fab_li", "pgd_l1", "fab_l1", "noise_li", "noise_l1")
# The best per norm is taken over these (the gradient attacks minimising that norm, as `--exact` runs them).
BEST = {LINF: ("pgd_li", "fab_li"), L1: ("pgd_l1", "fab_l1")}
CNN_ATTACKS = ("ifgsm_li", "cw_l2", "pgd_li", "fab_li", "ddn_l2", "fab_l2", "noise_li", "noise_l2", "best")
CNN_BEST = {"linf": ("pgd_li", "fab_li"), "l2": ("ddn_l2", "fab_l2")}


def pairs_of(model, x: np.ndarray, y: np.ndarray) -> list[tuple[int, int, int, str]]:
    """(image id, true label, target, info) for the correctly classified images."""
    from cleverscore.attacks import predict
    from cleverscore.running.targets import choose_targets

    logits = predict(model, x)
    return [(i, int(y[i]), t, info) for i in range(len(x)) if int(np.argmax(logits[i])) == y[i]
            for t, info in choose_targets(logits[i], TARGETS, SEED, i)]


def run_mlp_attacks(model, x: np.ndarray, pairs: list) -> tuple[dict, dict]:
    """Per attack: its checked result on all pairs, and its seconds per pair."""
    from cleverscore.attacks import AttackSettings, run_attack, targeted

    xs = x[[p[0] for p in pairs]]
    criterion = targeted([p[2] for p in pairs])
    results, seconds = {}, {}
    for name in MLP_ATTACKS:
        begin = time.perf_counter()
        results[name] = run_attack(name, model, xs, criterion, AttackSettings(seed=SEED))
        seconds[name] = (time.perf_counter() - begin) / len(pairs)
        print(f"[bench] {name}: {int(results[name].success.sum())}/{len(pairs)} succeeded, "
              f"{seconds[name]:.3f} s per pair", flush=True)
    return results, seconds


def exact_answer(cache: Path, pairwise: Path, net, x0: np.ndarray, pair: tuple, norm, eps_max: float,
                 time_limit: float, solve: bool) -> dict:
    """eps* by MILP inside the best attack's distortion (cached): value (NaN if open), bracket, status.

    The MILP asks what the attacks' examples must do: the target beats every class (`target_wins`).
    A proven answer of the pairwise problem (target >= true class only, `--exact`'s; cached in
    `pairwise`) is a lower bound of it: where the best attack comes within PAIRWISE_ENOUGH of that
    bound nothing is solved, and where the MILP stays open the bound stands in (status
    'lower_bound': best / eps* is then an upper bound of the ratio). A cached open answer is
    solved again when `solve` and the time limit is larger than its own; without `solve` only
    cached answers are read."""
    from cleverscore.certify.milp import minimal_distortion

    low = json.loads(pairwise.read_text()) if pairwise.exists() else None
    low = low if low is not None and low["status"] == "optimal" else None
    answer = json.loads(cache.read_text()) if cache.exists() else None
    settled = answer is not None and (answer["status"] == "optimal" or answer["time_limit"] >= time_limit)
    if low is not None and eps_max <= low["eps"] * (1 + PAIRWISE_ENOUGH) and (answer is None or not settled):
        answer = {"eps": math.nan, "lo": low["eps"], "hi": eps_max, "status": "time_limit", "seconds": 0.0,
                  "time_limit": 0.0}
    elif solve and not settled:
        begin = time.perf_counter()
        image_id, c, j, _ = pair
        bound = eps_max * (1 + 1e-6) if math.isfinite(eps_max) else None
        result = minimal_distortion(net, x0, c, j, norm, (-0.5, 0.5), time_limit, eps_max=bound, target_wins=True)
        answer = {"eps": float(result.value) if result.exact else math.nan, "lo": float(result.lower_bound),
                  "hi": float(min(result.upper_bound, eps_max)), "status": result.status,
                  "seconds": time.perf_counter() - begin, "time_limit": time_limit}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(answer))
    elif answer is None:
        answer = {"eps": math.nan, "lo": 0.0, "hi": eps_max, "status": "not_run", "seconds": 0.0, "time_limit": 0.0}
    if answer["status"] == "optimal":
        return {**answer, "via": "milp"}
    if low is None:
        return {**answer, "via": ""}
    # The pairwise eps* bounds eps* from below; an upper bound at it (an attack or the MILP's point) closes it.
    closed = min(answer["hi"], eps_max) <= low["eps"] * (1 + PAIRWISE_ENOUGH)
    return {**answer, "eps": low["eps"], "lo": max(answer["lo"], low["eps"]), "status":
            "optimal" if closed else "lower_bound", "via": "pairwise"}


def mlp_part(args) -> list[dict]:
    from cleverscore.certify.milp import relu_network_from_keras
    from cleverscore.data import load_dataset
    from cleverscore.models.zoo import load_zoo_model

    data = load_dataset("mnist", args.data_dir)
    x, y = data.test_data[:args.images], np.argmax(data.test_labels[:args.images], axis=1)
    rows = []
    for net_name, model_name in MLPS.items():
        model = load_zoo_model("mnist", model_name)
        net = relu_network_from_keras(model)
        pairs = pairs_of(model, x, y)
        print(f"[bench] {net_name}: {len(pairs)} pairs", flush=True)
        results, seconds = run_mlp_attacks(model, x, pairs)
        for k, pair in enumerate(pairs):
            row = {"net": net_name, "id": pair[0], "true_label": pair[1], "target_label": pair[2], "info": pair[3]}
            for norm in (LINF, L1):
                found = {name: float(results[name].distortion(norm)[k]) for name in MLP_ATTACKS}
                best = min(found[name] for name in BEST[norm])
                tag = f"{model_name.replace(',', '_')}_{pair[0]}_{pair[2]}_{norm.label}"
                exact = exact_answer(args.out / "exact_wins" / f"{tag}.json", args.out / "exact" / f"{tag}.json",
                                     net, x[pair[0]], pair, norm, best, args.time_limit,
                                     solve=f"{pair[3]}:{norm.label}" in args.solve.split(","))
                row.update({f"{norm.label}_{name}": value for name, value in found.items()})
                row.update({f"{norm.label}_best": best, f"{norm.label}_eps": exact["eps"],
                            f"{norm.label}_eps_status": exact["status"], f"{norm.label}_eps_seconds": exact["seconds"],
                            f"{norm.label}_eps_via": exact["via"], f"{norm.label}_eps_hi": exact["hi"]})
            row.update({f"seconds_{name}": seconds[name] for name in MLP_ATTACKS})
            rows.append(row)
            print(f"[bench] {net_name} {pair}: Li best {row['Li_best']:.5g} eps* {row['Li_eps']:.5g} "
                  f"({row['Li_eps_status']}); L1 best {row['L1_best']:.5g} eps* {row['L1_eps']:.5g} "
                  f"({row['L1_eps_status']})", flush=True)
    return rows


def ratio_text(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{np.median(values):.4f} / {np.max(values):.4f}"


def column(name: str) -> str:
    """The row key of an attack's distortion in the norm it minimises."""
    return f"{'Li' if name.endswith('li') else 'L1'}_{name}"


def mlp_report(rows: list[dict]) -> str:
    """Per MLP and norm: pairs with a proven eps* (or a proven lower bound of it, the pairwise eps*), and each
    attack's distortion / eps* over them (median / worst)."""
    lines = ["| net | norm | pairs with eps* (of which a lower bound) | best / eps* (median / worst) | "
             "attack / eps* (median / worst) |", "|---|---|---:|---:|---|"]
    for net in MLPS:
        for norm in (LINF, L1):
            proven = [r for r in rows if r["net"] == net and r[f"{norm.label}_eps_status"] in ("optimal", "lower_bound")]
            bounds = sum(r[f"{norm.label}_eps_status"] == "lower_bound" for r in proven)
            cells = []
            for name in MLP_ATTACKS:
                if name.startswith("noise") or column(name) != f"{norm.label}_{name}":
                    continue
                ratios = [r[f"{norm.label}_{name}"] / r[f"{norm.label}_eps"] for r in proven
                          if math.isfinite(r[f"{norm.label}_{name}"])]
                cells.append(f"{name} {ratio_text(ratios)}")
            best = [r[f"{norm.label}_best"] / r[f"{norm.label}_eps"] for r in proven]
            lines.append(f"| {net} | {norm.label} | {len(proven)} ({bounds}) of {sum(r['net'] == net for r in rows)} | "
                         f"{ratio_text(best)} | " + ", ".join(cells) + " |")
    lines += ["", "Success per attack and target type (all pairs):", ""]
    for net in MLPS:
        for info in ("top2", "least"):
            chosen = [r for r in rows if r["net"] == net and r["info"] == info]
            text = ", ".join(f"{name} {sum(math.isfinite(r[column(name)]) for r in chosen)}/{len(chosen)}"
                             for name in MLP_ATTACKS)
            lines.append(f"- {net} {info}: {text}")
    lines += ["", "Gradient-masking check (a gradient-free ray closer than both gradient attacks of the norm):", ""]
    for net in MLPS:
        chosen = [r for r in rows if r["net"] == net]
        for norm, name in ((LINF, "noise_li"), (L1, "noise_l1")):
            beaten = sum(r[f"{norm.label}_{name}"] < r[f"{norm.label}_best"] for r in chosen)
            lines.append(f"- {net} {norm.label}: {beaten}/{len(chosen)} pairs")
    lines += ["", "Seconds per pair (all pairs of one MLP in one batch, 1 thread):", ""]
    for net in MLPS:
        chosen = [r for r in rows if r["net"] == net]
        if chosen:
            lines.append(f"- {net}: " + ", ".join(f"{name} {chosen[0][f'seconds_{name}']:.3f}" for name in MLP_ATTACKS))
    return "\n".join(lines)


def cnn_part(args) -> list[dict]:
    """attacks.py on the MNIST CNN; its CSV rows."""
    csv_path = args.out / "cnn_attacks.csv"
    if not csv_path.exists():
        cmd = [sys.executable, "attacks.py", "-d", "mnist", "-m", "normal", "-n", str(args.cnn_images),
               "--target_type", str(TARGETS), "--attacks", ",".join(CNN_ATTACKS), "-b", "64",
               "--csv", str(csv_path), "--data_dir", str(args.data_dir)]
        print("$ " + " ".join(cmd), flush=True)
        with (args.out / "cnn_attacks.log").open("w") as log:
            subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"})
    with csv_path.open() as f:
        return list(csv.DictReader(f))


def cnn_report(rows: list[dict]) -> str:
    by = {}
    for r in rows:
        by.setdefault(r["attack"], {})[(int(r["id"]), r["info"])] = r
    pairs = sorted(by["best"])

    def value(attack: str, pair, key: str) -> float:
        r = by[attack][pair]
        return float(r[key]) if r["success"] == "True" else math.inf

    lines = []
    for key, baseline in (("linf", "ifgsm_li"), ("l2", "cw_l2")):
        best = [value("best", p, key) for p in pairs]
        gradient = [min(value(a, p, key) for a in CNN_BEST[key]) for p in pairs]
        base = [value(baseline, p, key) for p in pairs]
        per_pair = [b / a for b, a in zip(gradient, base) if math.isfinite(a) and math.isfinite(b)]
        lines.append(f"- {key}: median best {np.median(best):.4g}, median of {'/'.join(CNN_BEST[key])} "
                     f"{np.median(gradient):.4g}, median {baseline} {np.median(base):.4g}: ratio of medians "
                     f"{np.median(gradient) / np.median(base):.3f}, median per-pair ratio {np.median(per_pair):.3f} "
                     f"(n = {len(pairs)})")
    lines += ["", "Success and seconds per pair per attack and target type:", ""]
    for attack in CNN_ATTACKS:
        for info in ("top2", "least"):
            chosen = [r for (i, inf), r in by[attack].items() if inf == info]
            ok = sum(r["success"] == "True" for r in chosen)
            lines.append(f"- {attack} {info}: {ok}/{len(chosen)}, {np.mean([float(r['seconds']) for r in chosen]):.2f} s")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["mlp", "cnn"], required=True)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attacks")
    p.add_argument("--images", type=int, default=10, help="MLP part: first test images")
    p.add_argument("--cnn_images", type=int, default=20, help="CNN part: first test images")
    p.add_argument("--time_limit", type=float, default=60.0, help="MILP seconds per problem (--exact's default)")
    p.add_argument("--solve", default="top2:Li,top2:L1,least:Li,least:L1",
                   help="target type:norm whose MILPs are solved (cached open answers again when --time_limit "
                   "exceeds theirs); the others only read cached answers")
    p.add_argument("--data_dir", type=Path, default=Path(os.environ.get("CLEVER_DATA_DIR", ROOT / "data")) / "mnist")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "mlp":
        rows = mlp_part(args)
        with (args.out / "mlp.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(mlp_report(rows))
    else:
        print(cnn_report(cnn_part(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
