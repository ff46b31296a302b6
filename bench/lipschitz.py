#!/usr/bin/env python3
"""How tight the certified local Lipschitz constant is, and what it costs (issue: a proven constant that is tight).

    python3 bench/lipschitz.py --part mlp --images 10 --radii 0.02,0.05 --split 10
    python3 bench/lipschitz.py --part cnn --images 10 --split 0
    python3 bench/lipschitz.py --part cost --against ../older-checkout
    python3 bench/lipschitz.py --part gap --radius_from docs/lipschitz_cnn.csv --images 10

`--part mlp`: the shipped 784-32-32-10 and 784-64-64-10 ReLU MLPs, Linf balls of each radius, the
first `--images` MNIST test images x (top-2, least likely). Per pair: the exact constant L* (max
||grad g||_1 over the ball, MILP, `--time_limit` seconds), or for a pair the MILP leaves open the
largest norm found (a lower bound of L*: the larger of the MILP's best region and the project's
gradient-norm search, `--search_steps`); the Fast-Lip bound (the old `G1_certified`), the bound
through the backward pass in one pass, and with `--split` seconds per image of split search (with
`attained` 1 where the search proved its bound is a gradient norm in the ball, `certify/leaves.py`,
which then counts as found too, and `empty_leaves` the leaves its LPs found empty). Every row checks
that no bound is below that floor, that the search never finds more than an exact L*, and that an
attained bound is the exact L* where the MILP has it.

`--milp_from CSV` takes the MILP's answers from an earlier run's rows (e.g. docs/lipschitz_mlp.csv)
instead of solving them again (an hour at 60 s per pair). `--cut_steps N` sets the steps on the split
ReLUs' input cuts per pass (0: the search without cuts); `--no_clamp` the search before clamping.

`--part cnn`: the shipped MNIST 7-layer CNN (`--datasets mnist,cifar`: and the CIFAR one), Linf balls at each pair's
CROWN-certified radius and at twice it. Per pair: the largest gradient norms found at 4,096 points
(vertices and interior points of the ball) and by the project's gradient-norm search
(`--search_steps` steps, as `collect_gradients.py --search_steps`; the larger is "found"),
the Fast-Lip and the new bounds in all three dual norms,
proven/found, the CROWN radius, the radius the Lipschitz bound proves over the CROWN-radius ball,
and the seconds of each step. Every pair's radii are checked against the smallest Linf distortion the
project's strongest Linf attacks find (`attack_distortion`; the run stops if a radius is above it).
`--radius_from CSV` puts the balls at the CROWN radii of an earlier
run's rows instead (`earlier_crown_radius`; e.g. docs/lipschitz_cnn.csv), so that a change to the
certifier is measured on the same balls, and its radius against the earlier one (`radius_gain`).
`--optimize SECONDS` also pushes each image's radii with optimised slopes (`optimized_radius`).

`--part cost`: the default `--certify` of the issue's cost goal, `collect_gradients.py -n 1
--target_type 5 --certify` (MNIST CNN, image 0, top-2 and least likely, three norms and the
Lipschitz bounds), run from this checkout and, with `--against CHECKOUT`, from another one right
after it; prints `certify_seconds` per target, the ratio to the other checkout and to the goal
(38 s).

`--part gap`: where the CNN's bracket [found, proven] is lost, on the balls of an earlier `--part cnn` run
(`--radius_from`, required; both of its radii). Per ball: the one-pass proven bound, the largest
gradient norm found at points of the ball (that run's `found_*`), and the largest ||J(d)^T c|| that
`certify/multipliers.py` finds over the multipliers the bound relaxes (`--starts` starts): the bound
covers every such choice, so proven / search is (at most) what the relaxation loses and search /
found (at least) what the multipliers' coupling through the input is worth. The run stops if a
bound is below the search's value.

Rows go to `--out` (CSV, one per pair and radius); the summary is printed. Numbers in README and
the issue notes come from here.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MLPS = {"784-32-32-10": "3,32,relu", "784-64-64-10": "3,64,relu"}
FOUND_POINTS = 4096
BUDGET = 2 << 30  # the MLPs and the MNIST CNN fit it; the CIFAR CNN gets the command line's cap (CERTIFY_MEMORY_CAP)


def pairs(model, data, images: int):
    """(image, true label, [top-2, least likely]) for correctly classified test images among the first `images`."""
    logits = model(data.test_data[:images]).numpy()
    labels = data.test_labels[:images].argmax(1)
    for i, (z, c) in enumerate(zip(logits, labels)):
        if int(np.argmax(z)) == int(c):
            order = np.argsort(z)
            yield i, int(c), [int(order[-2]), int(order[0])]


def mlp_rows(args) -> list[dict]:
    from cleverscore.certify import from_keras
    from cleverscore.certify.crown import prepare
    from cleverscore.certify.jacobian import gradient_norm_bounds
    from cleverscore.certify.lipschitz import dual_norms, gradient_interval
    from cleverscore.certify.milp import local_lipschitz, relu_network_from_keras
    from cleverscore.data import load_dataset
    from cleverscore.models.zoo import load_zoo_model
    from cleverscore.norms import LINF
    from cleverscore.sampling.estimator import EstimateLipschitz

    data = load_dataset("mnist", args.data_dir)
    earlier = earlier_milp(args.milp_from)
    rows = []
    for name in args.models.split(","):
        if name not in MLPS:
            raise SystemExit(f"--models: unknown MLP {name!r}; choose from {', '.join(MLPS)}")
        model = load_zoo_model("mnist", MLPS[name])
        graph, net = from_keras(model), relu_network_from_keras(model)
        searcher = EstimateLipschitz(log=None)
        searcher.load_model(model=model)
        for radius in args.radii:
            for image, c, targets in pairs(model, data, args.images):
                x = data.test_data[image]
                problem = prepare(graph, x, c, targets)
                begin = time.perf_counter()
                forward = problem.propagate(np.array([radius]), LINF, BUDGET)
                one_pass, _ = gradient_norm_bounds(forward, problem.spec, BUDGET)
                one_pass_s = time.perf_counter() - begin
                interval = dual_norms(gradient_interval(forward, problem.spec[None]))[0]
                begin = time.perf_counter()
                split, report = gradient_norm_bounds(forward, problem.spec, BUDGET, 2, args.split,
                                                     clamp=not args.no_clamp, cut_steps=args.cut_steps)
                split_s = time.perf_counter() - begin
                for k, t in enumerate(targets):
                    exact = earlier.get((name, radius, image, t)) or local_lipschitz(net, x, c, t, radius,
                                                                                      time_limit=args.time_limit)
                    searched = searched_norms(searcher, x, c, t, radius, args.search_steps)[2]
                    if exact.exact and searched > exact.value * (1 + 1e-5):
                        raise SystemExit(f"WRONG MILP: {name} r={radius} image {image} target {t}: the search found "
                                         f"{searched} above the exact {exact.value}")
                    attained = bool(report["attained"][k])  # the split bound is a gradient norm in the ball
                    if attained and exact.exact and abs(split[k, 2] - exact.value) > 1e-4 * exact.value:  # float32 bounds
                        raise SystemExit(f"WRONG LEAF: {name} r={radius} image {image} target {t}: the split search "
                                         f"says {split[k, 2]} is attained, the exact constant is {exact.value}")
                    # Any norm found is a lower bound of L*: the MILP's, the search's or an attained split bound.
                    floor = exact.value if exact.exact else max(exact.lower_bound, searched,
                                                                split[k, 2] * (1 - 1e-6) if attained else 0.0)
                    bounds = {"interval": interval[k, 2], "one_pass": min(interval[k, 2], one_pass[k, 2]),
                              "split": min(interval[k, 2], split[k, 2])}
                    below = [b for b, v in bounds.items() if v < floor * (1 - 1e-5)]
                    if below:
                        raise SystemExit(f"UNSOUND: {name} r={radius} image {image} target {t}: {below} below {floor}")
                    row = {"model": name, "radius": radius, "image": image, "target": t,
                           "info": "top2" if k == 0 else "least", "exact": exact.value if exact.exact else "",
                           "exact_upper": exact.upper_bound, "milp_found": exact.value if exact.exact else
                           exact.lower_bound, "searched": searched, "found": floor, **bounds,
                           "one_pass_s": one_pass_s / len(targets), "split_s": split_s / len(targets),
                           "parts": report["parts"], "attained": int(attained),
                           "empty_leaves": report["empty_leaves"]}
                    rows.append(row)
                    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                          flush=True)
    return rows


def earlier_milp(path: str | None) -> dict:
    """(model, radius, image, target) -> the MILP's answer stored in an earlier `--part mlp` CSV (its exact value,
    or its upper bound and best found norm), so that a rerun of the bounds does not solve them again."""
    from types import SimpleNamespace

    if not path:
        return {}
    out = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            exact = row["exact"] != ""
            out[(row["model"], float(row["radius"]), int(row["image"]), int(row["target"]))] = SimpleNamespace(
                exact=exact, value=float(row["exact"]) if exact else None,
                lower_bound=float(row.get("milp_found") or row["found"]),
                upper_bound=float(row["exact_upper"]))
    return out


def found_norms(model, x: np.ndarray, c: int, t: int, radius: float, seed: int = 0) -> np.ndarray:
    """(3,) the largest ||grad g||_q (q = inf, 2, 1) at vertices and interior points of the Linf ball in the box."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    best = np.zeros(3)
    for _ in range(FOUND_POINTS // 512):
        d = rng.choice([-radius, radius], size=(512, *x.shape)).astype(np.float32)
        d[:256] *= rng.uniform(0, 1, size=(256, *x.shape)).astype(np.float32)
        points = tf.constant(np.clip(x[None] + d, -0.5, 0.5))
        with tf.GradientTape() as tape:
            tape.watch(points)
            z = model(points)
            margin = z[:, c] - z[:, t]
        g = tf.reshape(tape.gradient(margin, points), (512, -1)).numpy().astype(np.float64)
        best = np.maximum(best, [np.abs(g).max(), np.linalg.norm(g, axis=1).max(), np.abs(g).sum(1).max()])
    return best


def searched_norms(searcher, x: np.ndarray, c: int, t: int, radius: float, steps: int) -> np.ndarray:
    """(3,) the largest ||grad g||_q (q = inf, 2, 1) the project's gradient-norm search (`--search_steps`) finds in
    the Linf ball in the box; zeros for 0 steps."""
    if steps <= 0:
        return np.zeros(3)
    g2, g1, gi = searcher.search_maxima(x, c, [t], steps, sample_norm="li", radius=radius)[0]
    return np.array([gi, g2, g1], dtype=np.float64)


def earlier_radii(path: str | None) -> dict:
    """(dataset, image, target) -> the CROWN radius of an earlier run's rows (`--radius_from`)."""
    if not path:
        return {}
    with open(path, newline="") as f:
        return {(r["dataset"], int(r["image"]), int(r["target"])): float(r["crown_radius"]) for r in csv.DictReader(f)}


def attack_distortions(model, x: np.ndarray, targets) -> np.ndarray:
    """(T,) the smallest Linf distortion of the project's strongest Linf attacks toward each target (an upper bound
    of the exact minimal distortion, so no certified radius may exceed it)."""
    from cleverscore.attacks.best import strongest
    from cleverscore.attacks.criteria import targeted
    from cleverscore.norms import LINF

    images = np.repeat(x[None], len(targets), axis=0).astype(np.float32)
    return strongest(model, images, targeted(np.asarray(targets)), [LINF])[0].distortion[LINF]


def cnn_rows(args) -> list[dict]:
    from cleverscore.certify import certified_radius, from_keras
    from cleverscore.certify.crown import prepare
    from cleverscore.certify.jacobian import gradient_norm_bounds
    from cleverscore.certify.lipschitz import dual_norms, gradient_interval
    from cleverscore.data import load_dataset
    from cleverscore.models.zoo import load_zoo_model
    from cleverscore.norms import LINF
    from cleverscore.running.bounds import CERTIFY_MEMORY_CAP, lipschitz_radius
    from cleverscore.sampling.estimator import EstimateLipschitz

    rows, earlier = [], earlier_radii(args.radius_from)
    for dataset in args.datasets.split(","):
        data = load_dataset(dataset, args.data_dir if dataset == "mnist" else args.cifar_dir)
        model = load_zoo_model(dataset, "normal")
        graph = from_keras(model)
        searcher = EstimateLipschitz(log=None)
        searcher.load_model(model=model)
        for image, c, targets in pairs(model, data, args.images):
            x = data.test_data[image]
            begin = time.perf_counter()
            budget = BUDGET if dataset == "mnist" else CERTIFY_MEMORY_CAP
            crown = certified_radius(graph, x, c, targets, LINF, memory_budget=budget).radii
            crown_s = time.perf_counter() - begin
            optimized = certified_radius(graph, x, c, targets, LINF, memory_budget=budget,
                                         optimize_seconds=args.optimize).radii if args.optimize > 0 else crown
            attacked = attack_distortions(model, x, targets)
            if np.any(np.maximum(crown, optimized) > attacked * (1 + 1e-6)):
                raise SystemExit(f"UNSOUND: {dataset} image {image}: certified radii {crown} / {optimized} above "
                                 f"the attacks' distortions {attacked}")
            logits = model(x[None]).numpy()[0].astype(np.float64)
            for k, t in enumerate(targets):
                basis = earlier.get((dataset, image, int(t)), float(crown[k]))
                if earlier and (dataset, image, int(t)) not in earlier:
                    print(f"[INFO] {dataset} image {image} target {t}: no earlier radius; the balls use this run's")
                for factor in (1.0, 2.0):
                    radius = basis * factor
                    problem = prepare(graph, x, c, [t])
                    begin = time.perf_counter()
                    forward = problem.propagate(np.array([radius]), LINF, budget)
                    new, _ = gradient_norm_bounds(forward, problem.spec, budget, 2, args.split, cut_steps=args.cut_steps)
                    new_s = time.perf_counter() - begin
                    optimized_bound, optimized_s = None, 0.0
                    if args.optimize_lipschitz > 0:
                        begin = time.perf_counter()
                        tighter = problem.tightened(forward, args.optimize_lipschitz)
                        optimized_bound, _ = gradient_norm_bounds(tighter, problem.spec, budget, 2, args.split,
                                                                  cut_steps=args.cut_steps)
                        optimized_s = time.perf_counter() - begin
                    old = dual_norms(gradient_interval(forward, problem.spec[None]))[0]
                    sampled = found_norms(model, x, c, t, radius)
                    searched = searched_norms(searcher, x, c, t, radius, args.search_steps)
                    found = np.maximum(sampled, searched)
                    bound = np.minimum(old[0], new[0])
                    optimized_bound = bound if optimized_bound is None else np.minimum(bound, optimized_bound[0])
                    if np.any(optimized_bound < found * (1 - 1e-5)):
                        raise SystemExit(f"UNSOUND: {dataset} image {image} target {t}: {bound} / {optimized_bound} "
                                         f"below found {found}")
                    row = {"dataset": dataset, "image": image, "target": t, "info": "top2" if k == 0 else "least",
                           "factor": factor, "radius": radius, "crown_radius": float(crown[k]),
                           "earlier_crown_radius": basis, "radius_gain": float(crown[k]) / basis,
                           "optimized_radius": float(optimized[k]), "attack_distortion": float(attacked[k]),
                           "lipschitz_radius": lipschitz_radius(logits[c] - logits[t], bound[2], radius),
                           "crown_s": crown_s / len(targets), "lipschitz_s": new_s, "optimized_s": optimized_s}
                    for q, col in (("inf", 0), ("2", 1), ("1", 2)):
                        row.update({f"sampled_{q}": sampled[col], f"searched_{q}": searched[col]})
                        row.update({f"found_{q}": found[col], f"interval_{q}": old[0, col], f"proven_{q}": bound[col],
                                    f"ratio_{q}": bound[col] / found[col], f"interval_ratio_{q}": old[0, col] / found[col],
                                    f"optimized_ratio_{q}": optimized_bound[col] / found[col]})
                    rows.append(row)
                    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                          flush=True)
    return rows


COST_GOAL_SECONDS = 38.0


def certify_seconds(checkout: Path, data_dir: str | None) -> float:
    """`certify_seconds` per target of the cost goal's command run from `checkout`."""
    from scipy.io import loadmat

    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(checkout / "collect_gradients.py"), "-n", "1", "--target_type", "5",
                   "--certify", "-N", "16", "-i", "3", "--save", out]
        if data_dir:
            command += ["--data_dir", data_dir]
        subprocess.run(command, check=True, cwd=out, stdout=subprocess.DEVNULL)
        files = sorted(Path(out).rglob("*.mat"))
        if not files:
            raise SystemExit(f"{checkout}: the command wrote no result file")
        return float(np.mean([float(loadmat(f)["certify_seconds"].ravel()[0]) for f in files]))


def cost(args) -> None:
    seconds = certify_seconds(ROOT, args.data_dir)
    print(f"this checkout: certify_seconds {seconds:.1f} s per target; goal {COST_GOAL_SECONDS:g} s: "
          f"ratio {seconds / COST_GOAL_SECONDS:.3f}")
    if args.against:
        other = certify_seconds(Path(args.against).resolve(), args.data_dir)
        print(f"{args.against}: certify_seconds {other:.1f} s per target; this checkout / that one: {seconds / other:.3f}")


def gap_rows(args) -> list[dict]:
    from cleverscore.certify import from_keras
    from cleverscore.certify.crown import prepare
    from cleverscore.certify.jacobian import gradient_norm_bounds
    from cleverscore.certify.multipliers import worst_multipliers
    from cleverscore.data import load_dataset
    from cleverscore.models.zoo import load_zoo_model
    from cleverscore.norms import LINF

    if not args.radius_from:
        raise SystemExit("--part gap needs --radius_from (the CSV of an earlier --part cnn run)")
    with open(args.radius_from, newline="") as f:
        balls = [r for r in csv.DictReader(f) if r["dataset"] == "mnist" and int(r["image"]) < args.images]
    data = load_dataset("mnist", args.data_dir)
    model = load_zoo_model("mnist", "normal")
    graph = from_keras(model)
    rows = []
    for ball in balls:
        x = data.test_data[int(ball["image"])]
        label = int(np.argmax(model(x[None]).numpy()[0]))
        problem = prepare(graph, x, label, [int(ball["target"])])
        forward = problem.propagate(np.array([float(ball["radius"])]), LINF, BUDGET)
        proven, _ = gradient_norm_bounds(forward, problem.spec, BUDGET, 2, 0)
        begin = time.perf_counter()
        search = worst_multipliers(forward, problem.spec[0].numpy(), starts=args.starts)
        row = {k: ball[k] for k in ("dataset", "image", "target", "info", "factor", "radius")}
        row["search_s"] = time.perf_counter() - begin
        for k, q in enumerate(("inf", "2", "1")):
            found = float(ball[f"found_{q}"])
            if proven[0][k] < search.best[k] * (1 - 1e-6):
                raise SystemExit(f"UNSOUND: image {ball['image']} target {ball['target']} q={q}: proven "
                                 f"{proven[0][k]:.6g} below a multiplier choice's norm {search.best[k]:.6g}")
            row.update({f"found_{q}": found, f"centre_{q}": search.at_centre[k], f"search_{q}": search.best[k],
                        f"proven_{q}": proven[0][k], f"proven_over_search_{q}": proven[0][k] / search.best[k],
                        f"search_over_found_{q}": search.best[k] / found})
        print(f"image {row['image']} {row['info']} x{row['factor']}: L1 found {row['found_1']:.1f}, search "
              f"{row['search_1']:.1f}, proven {row['proven_1']:.1f} ({row['search_s']:.0f} s)", flush=True)
        rows.append(row)
    return rows


def summarise_gap(rows: list[dict]) -> None:
    for factor in sorted({r["factor"] for r in rows}):
        sel = [r for r in rows if r["factor"] == factor]
        parts = ", ".join(f"q={q}: proven/search {np.median([r[f'proven_over_search_{q}'] for r in sel]):.3g} "
                          f"(range {np.min([r[f'proven_over_search_{q}'] for r in sel]):.3g}-"
                          f"{np.max([r[f'proven_over_search_{q}'] for r in sel]):.3g}), search/found "
                          f"{np.median([r[f'search_over_found_{q}'] for r in sel]):.3g}" for q in ("1", "2", "inf"))
        print(f"MNIST CNN at {factor}x the earlier CROWN radius, {len(sel)} balls (medians): {parts}; search "
              f"{np.median([r['search_s'] for r in sel]):.0f} s per ball")


def summarise_mlp(rows: list[dict]) -> None:
    for name in MLPS:
        for radius in sorted({r["radius"] for r in rows}):
            sel = [r for r in rows if r["model"] == name and r["radius"] == radius]
            if not sel:
                continue
            exact = [r for r in sel if r["exact"] != ""]
            parts = ", ".join(f"{b} median {np.median([r[b] / r['found'] for r in sel]):.3f} "
                              f"max {np.max([r[b] / r['found'] for r in sel]):.3f}"
                              for b in ("interval", "one_pass", "split"))
            print(f"{name} r={radius}: {len(sel)} pairs, {len(exact)} exact (the others against the largest norm "
                  f"found, a lower bound of L*): {parts}; the split search's median against exact L* alone: "
                  f"{np.median([r['split'] / r['exact'] for r in exact]) if exact else float('nan'):.3f}; "
                  f"seconds per pair: one pass {np.median([r['one_pass_s'] for r in sel]):.2f}, "
                  f"split {np.median([r['split_s'] for r in sel]):.2f}; split bound attained (exact) on "
                  f"{sum(r['attained'] for r in sel)} pairs")


def summarise_cnn(rows: list[dict]) -> None:
    for dataset in sorted({r["dataset"] for r in rows}):
        for factor in (1.0, 2.0):
            sel = [r for r in rows if r["dataset"] == dataset and r["factor"] == factor]
            ratios = ", ".join(f"q={q}: proven/found median {np.median([r[f'ratio_{q}'] for r in sel]):.4g} "
                               f"(Fast-Lip {np.median([r[f'interval_ratio_{q}'] for r in sel]):.4g})"
                               for q in ("1", "2", "inf"))
            optimized = ", ".join(f"q={q}: {np.median([r[f'optimized_ratio_{q}'] for r in sel]):.4g}"
                                  for q in ("1", "2", "inf"))
            print(f"{dataset} CNN at {factor:g}x the CROWN radius, {len(sel)} pairs: {ratios}; "
                  f"with optimised forward slopes (--optimize_lipschitz, {np.median([r['optimized_s'] for r in sel]):.1f} s"
                  f" per pair) proven/found median {optimized}; "
                  f"Lipschitz radius / CROWN radius median "
                  f"{np.median([r['lipschitz_radius'] / r['crown_radius'] for r in sel]):.3g}; seconds per pair: "
                  f"CROWN radius {np.median([r['crown_s'] for r in sel]):.1f}, Lipschitz bounds "
                  f"{np.median([r['lipschitz_s'] for r in sel]):.1f}")
        sel = [r for r in rows if r["dataset"] == dataset and r["factor"] == 1.0]
        gains = np.array([r["radius_gain"] for r in sel])
        optimized = np.array([r["optimized_radius"] / r["earlier_crown_radius"] for r in sel])
        print(f"{dataset} CNN radius / the balls' (earlier) CROWN radius: median {np.median(gains):.4g} "
              f"(range {gains.min():.4g}-{gains.max():.4g}); with optimised slopes median {np.median(optimized):.4g} "
              f"(range {optimized.min():.4g}-{optimized.max():.4g})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["mlp", "cnn", "cost", "gap"], required=True)
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--radii", default="0.02,0.05", help="MLP Linf radii")
    p.add_argument("--models", default=",".join(MLPS), help="--part mlp: comma-separated MLPs")
    p.add_argument("--split", type=float, default=10.0, help="seconds of split search per image (0: one pass)")
    p.add_argument("--time_limit", type=float, default=60.0, help="seconds per MILP")
    p.add_argument("--cut_steps", type=int, default=None,
                   help="steps on the split ReLUs' input cuts per pass (default: the library's; 0: no cuts)")
    p.add_argument("--no_clamp", action="store_true",
                   help="--part mlp: split ReLUs without clamping the forward bounds (the search before clamping)")
    p.add_argument("--milp_from", default=None,
                   help="--part mlp: take the MILP's answers from this earlier CSV instead of solving again")
    p.add_argument("--search_steps", type=int, default=50,
                   help="steps of the gradient-norm search for the found end (--part cnn: 0 for sampled points "
                        "only; --part mlp: 0 for the MILP's alone)")
    p.add_argument("--radius_from", default=None,
                   help="--part cnn: balls at the CROWN radii of this earlier CSV's rows (same dataset, image, target)")
    p.add_argument("--optimize", type=float, default=0.0,
                   help="--part cnn: seconds per image of optimised slopes for the radius (optimized_radius)")
    p.add_argument("--optimize_lipschitz", type=float, default=0.0,
                   help="--part cnn: seconds per ball of optimised ReLU lower slopes for the forward bounds the "
                        "Lipschitz bound starts from (optimized_ratio_*, optimized_s); 0: off")
    p.add_argument("--starts", type=int, default=3, help="--part gap: starts of the multiplier search per ball")
    p.add_argument("--datasets", default="mnist", help="--part cnn: comma-separated datasets (mnist, cifar)")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--cifar_dir", default=None)
    p.add_argument("--out", default="bench/results/lipschitz.csv")
    p.add_argument("--against", default=None, help="--part cost: another checkout to time right after this one")
    args = p.parse_args()
    if args.cut_steps is None:
        from cleverscore.certify.jacobian import CUT_STEPS

        args.cut_steps = CUT_STEPS
    if args.part == "cost":
        cost(args)
        return
    args.radii = [float(r) for r in args.radii.split(",")]
    rows = {"mlp": mlp_rows, "cnn": cnn_rows, "gap": gap_rows}[args.part](args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    {"mlp": summarise_mlp, "cnn": summarise_cnn, "gap": summarise_gap}[args.part](rows)


if __name__ == "__main__":
    main()
