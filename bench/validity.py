#!/usr/bin/env python3
"""The validity study: CLEVER's Linf estimate against exact answers, and beside certified radii.

    python3 bench/validity.py --images 5 --radii 0.02,0.05 --out lipschitz_mat/validity

For the two shipped small ReLU MLPs (784-32-32-10 and 784-64-64-10), each of the first `--images`
MNIST test images, its top-2 and least-likely targets and each Linf sampling radius, it records:
- CLEVER's Linf score and its Lipschitz estimate (of max ||grad g||_1 over the ball) with both 95%
  intervals, from `collect_gradients.py -N 256 -i 100 --sample_norm li --radius R` and `clever.py`;
- the same at an equal gradient budget with `--search_steps` (fewer iterations, see SEARCH_ITERS);
- the exact local Lipschitz constant L* (MILP, `cleverscore.certify.milp.local_lipschitz`), the
  exact minimal Linf distortion eps* (`minimal_distortion`), the certified Linf radius (CROWN,
  `cleverscore.certify.certified_radius`) and the Linf distortion of an I-FGSM example.
On the shipped MNIST and CIFAR CNNs (no exact answers) it records L2 CLEVER scores (default L2
sampling law), certified L2 radii and CW-L2 distortions (`attacks.py`).

Every stage reuses what a previous run left in `--out` (collect_gradients.py skips existing
files; exact and certified answers are cached as JSON), so a rerun only renders the tables again.
The raw rows go to docs/validity.csv (MLPs), docs/validity_cnn.csv and docs/validity_runs.csv
(wall times); docs/validity.md is rendered from those CSVs (`--render_only` redoes just that).
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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cleverscore.norms import L2, LINF, LpNorm  # noqa: E402
from cleverscore.sampling.search import STARTS  # noqa: E402
from cleverscore.sampling.smoothed import BETA_SCHEDULE  # noqa: E402

PYTHON = sys.executable
MLPS = {"784-32-32-10": "3,32,relu", "784-64-64-10": "3,64,relu"}
CNNS = {"MNIST CNN": ("mnist", "normal"), "CIFAR CNN": ("cifar", "normal")}
TARGETS = "5"  # bit mask: 1 top-2 + 4 least likely
NSAMPS, PLAIN_ITERS = 256, 100
SEARCH_STEPS = 25
PHASES = len(BETA_SCHEDULE)
HVP_COST = 3  # gradients one Hessian-vector product (gradient of a gradient norm) costs


def search_gradients(steps: int = SEARCH_STEPS, batch: int = NSAMPS) -> int:
    """Gradients one target's `--search_steps` costs at most (see search.py, smoothed.py, running/search.py).

    One fresh batch scored (`batch` gradients), then per gradient norm (3) and beta phase (5) one
    true gradient at each of the 32 starts and, per step of the phase, one Hessian-vector product
    on the smoothed copy plus one true gradient at each start; then per gradient norm the region
    walk's cap of 32 pattern gradients per step and one true gradient at its best point. The
    walk's LPs are not gradients: their time is in the run times.
    """
    per_phase = max(1, steps // PHASES)
    ascent = 3 * PHASES * STARTS * (1 + per_phase * (HVP_COST + 1))
    walk = 3 * (STARTS * steps + 1)
    return batch + ascent + walk


PLAIN_BUDGET = NSAMPS * PLAIN_ITERS
SEARCH_ITERS = (PLAIN_BUDGET - search_gradients()) // NSAMPS  # 50 iterations: 12,800 + 12,739 = 25,539 gradients


@dataclass(frozen=True)
class Study:
    """Where things go and how much of them."""

    out: Path
    images: int
    radii: tuple[float, ...]
    time_limit: float
    cnn_images: dict[str, int]
    shrink_pairs: int
    data_dirs: dict[str, str]


# ---------------------------------------------------------------- running the command lines


def run_logged(cmd: list[str], log: Path) -> float:
    """Run a command (its output appended to `log`); its wall time in seconds."""
    begin = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - begin


def mat_count(folder: Path) -> int:
    return len(list(folder.rglob("*.mat"))) if folder.exists() else 0


def collect(study: Study, dataset: str, model: str, save: Path, extra: list[str], images: int,
            first: int = 0, targets: str = TARGETS) -> tuple[float, int]:
    """collect_gradients.py into `save`; (wall seconds, new files): zero new files when all existed."""
    before = mat_count(save)
    cmd = [PYTHON, "collect_gradients.py", "-d", dataset, "-m", model, "-n", str(images), "-f", str(first),
           "--target_type", targets, "-s", str(save), "--quiet", "--data_dir", study.data_dirs[dataset], *extra]
    seconds = run_logged(cmd, study.out / "log.txt")
    return seconds, mat_count(save) - before


def scores(study: Study, folder: Path, norm: str) -> list[dict]:
    """clever.py's CSV rows of one norm for a folder of .mat files."""
    table = folder / "scores.csv"
    run_logged([PYTHON, "clever.py", str(folder), "--csv", str(table)], study.out / "log.txt")
    with table.open() as f:
        return [row for row in csv.DictReader(f) if row["norm"] == norm]


def model_folder(save: Path, dataset: str, model: str) -> Path:
    return save / f"{dataset}_{model}"


def linf_args(radius: float, iters: int, search: int = 0) -> list[str]:
    args = ["-N", str(NSAMPS), "-i", str(iters), "--sample_norm", "li", "--radius", str(radius)]
    return args + (["--search_steps", str(search)] if search else [])


# ---------------------------------------------------------------- cached exact and certified answers


def cached(path: Path, compute) -> dict:
    """The JSON at `path`, or compute() written there."""
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return value


class Models:
    """Keras models, datasets and MILP networks, loaded once."""

    def __init__(self, data_dirs: dict[str, str]):
        self.data_dirs, self._models, self._data, self._nets = data_dirs, {}, {}, {}

    def keras(self, dataset: str, model: str):
        if (dataset, model) not in self._models:
            from cleverscore.models.zoo import load_zoo_model

            self._models[dataset, model] = load_zoo_model(dataset, model)
        return self._models[dataset, model]

    def image(self, dataset: str, image_id: int) -> np.ndarray:
        if dataset not in self._data:
            from cleverscore.data import load_dataset

            self._data[dataset] = load_dataset(dataset, self.data_dirs[dataset]).test_data
        return np.asarray(self._data[dataset][image_id], np.float32)

    def net(self, model: str):
        if model not in self._nets:
            from cleverscore.certify.milp import relu_network_from_keras

            self._nets[model] = relu_network_from_keras(self.keras("mnist", model))
        return self._nets[model]


def exact_distortion(models: Models, model: str, pair: tuple[int, int, int], time_limit: float) -> dict:
    """eps* in Linf (MILP, searched inside an I-FGSM example's distance), the attack's distortion, timed."""
    from cleverscore.certify.milp import minimal_distortion
    from cleverscore.running.bounds import found_examples

    image_id, c, j = pair
    x0 = models.image("mnist", image_id)
    attack = float(found_examples(models.keras("mnist", model), x0, [j], (-0.5, 0.5))[LINF][0])
    begin = time.perf_counter()
    eps_max = attack * (1 + 1e-6) if math.isfinite(attack) else None
    result = minimal_distortion(models.net(model), x0, c, j, LINF, (-0.5, 0.5), time_limit, eps_max=eps_max)
    value = float(result.value) if result.exact and result.value is not None else math.nan
    return {"eps": value, "eps_lo": float(result.lower_bound), "eps_hi": min(float(result.upper_bound), attack),
            "eps_status": result.status, "eps_seconds": time.perf_counter() - begin, "attack": attack}


def exact_lipschitz(models: Models, model: str, pair: tuple[int, int, int], radius: float, time_limit: float) -> dict:
    """L* = max ||grad g||_1 over the Linf ball (MILP), with its proven bracket and time."""
    from cleverscore.certify.milp import local_lipschitz

    image_id, c, j = pair
    begin = time.perf_counter()
    lip = local_lipschitz(models.net(model), models.image("mnist", image_id), c, j, radius, (-0.5, 0.5), time_limit)
    return {"L": float(lip.value) if lip.exact else math.nan, "L_lo": float(lip.lower_bound),
            "L_hi": float(lip.upper_bound), "L_status": lip.status, "L_seconds": time.perf_counter() - begin}


def certified(models: Models, dataset: str, model: str, pair: tuple[int, int, int], norm: LpNorm) -> dict:
    """The CROWN-certified radius in one norm, timed."""
    from cleverscore.certify import certified_radius, from_keras
    from cleverscore.running.bounds import certify_memory_budget

    image_id, c, j = pair
    begin = time.perf_counter()
    graph = from_keras(models.keras(dataset, model))
    radii = certified_radius(graph, models.image(dataset, image_id), c, [j], norm, (-0.5, 0.5),
                             memory_budget=certify_memory_budget())
    return {"certified": float(radii.radii[0]), "certify_seconds": time.perf_counter() - begin}


# ---------------------------------------------------------------- the MLP study


def fnum(row: dict, key: str) -> float:
    value = row.get(key, "")
    return float(value) if value not in ("", None) else math.nan


def pair_of(row: dict) -> tuple[int, int, int]:
    return int(row["id"]), int(row["true_label"]), int(row["target_label"])


def by_pair(rows: list[dict]) -> dict[tuple[int, int, int], dict]:
    return {pair_of(r): r for r in rows}


def record(runs: list[dict], net: str, radius: float | str, kind: str, timing: tuple[float, int]) -> None:
    runs.append({"net": net, "radius": radius, "kind": kind, "seconds": round(timing[0], 2), "new_files": timing[1]})


def mlp_radius(study: Study, models: Models, net: str, radius: float, runs: list[dict]) -> list[dict]:
    """One MLP at one radius: the three collections, the scores and the exact answers, as CSV rows."""
    model = MLPS[net]
    base = study.out / net / f"r{radius}"
    folders = {kind: base / kind for kind in ("plain", "search", "nosearch")}
    record(runs, net, radius, "plain", collect(study, "mnist", model, folders["plain"], linf_args(radius, PLAIN_ITERS),
                                               study.images))
    record(runs, net, radius, "search", collect(study, "mnist", model, folders["search"],
                                                linf_args(radius, SEARCH_ITERS, SEARCH_STEPS), study.images))
    record(runs, net, radius, "nosearch", collect(study, "mnist", model, folders["nosearch"],
                                                  linf_args(radius, SEARCH_ITERS), study.images))
    plain = by_pair(scores(study, model_folder(folders["plain"], "mnist", model), "Li"))
    search = by_pair(scores(study, model_folder(folders["search"], "mnist", model), "Li"))
    rows = []
    for pair in sorted(q for q in plain if q[0] < study.images):  # a folder may hold more images from a larger run
        p, s = plain[pair], search.get(pair, {})
        tag = f"{model}_{pair[0]}_{pair[1]}_{pair[2]}"
        dist = cached(study.out / "exact" / f"{tag}_dist.json",
                      lambda pair=pair: exact_distortion(models, model, pair, study.time_limit))
        lip = cached(study.out / "exact" / f"{tag}_lip_r{radius}.json",
                     lambda pair=pair: exact_lipschitz(models, model, pair, radius, study.time_limit))
        cert = cached(study.out / "exact" / f"{tag}_cert_Li.json",
                      lambda pair=pair: certified(models, "mnist", model, pair, LINF))
        rows.append(mlp_row(net, radius, p, s, {**dist, **lip, **cert}))
        print(f"[validity] {net} r={radius} pair {pair}: L*={lip['L']:.4g} ({lip['L_status']}), "
              f"est={fnum(p, 'lipschitz'):.4g}, search est={fnum(s, 'lipschitz'):.4g}, eps*={dist['eps']:.4g}",
              flush=True)
    return rows


def mlp_row(net: str, radius: float, plain: dict, search: dict, exact: dict) -> dict:
    row = {"net": net, "radius": radius, "id": plain["id"], "true_label": plain["true_label"],
           "target_label": plain["target_label"], "info": plain["info"], "g_x0": fnum(plain, "g_x0"),
           "sampled_max": fnum(plain, "lipschitz_found")}
    for prefix, source in (("", plain), ("search_", search)):
        for key in ("lipschitz", "lipschitz_lo", "lipschitz_hi", "lipschitz_rerun_lo", "lipschitz_rerun_hi", "score",
                    "plateau", "method"):
            row[prefix + key] = source.get(key, "") if key in ("plateau", "method") else fnum(source, key)
    row["search_found"] = fnum(search, "searched")
    row.update(exact)
    return row


def shrink_rows(study: Study, models: Models, rows: list[dict], runs: list[dict]) -> list[dict]:
    """For a few pairs of the 784-32-32-10 MLP at the largest radius, collect again at min(score, R)."""
    radius, net = max(study.radii), "784-32-32-10"
    model = MLPS[net]
    chosen = [r for r in rows if r["net"] == net and r["radius"] == radius and r["score"] < radius]
    out = []
    for r in chosen[: study.shrink_pairs]:
        small = float(f"{r['score']:.4g}")
        pair = (int(r["id"]), int(r["true_label"]), int(r["target_label"]))
        save = study.out / net / "shrink" / f"{pair[0]}_{pair[2]}"
        timing = collect(study, "mnist", model, save, linf_args(small, PLAIN_ITERS), 1, first=pair[0],
                         targets="1" if r["info"] == "top2" else "4")
        record(runs, net, small, f"shrink {pair}", timing)
        got = by_pair(scores(study, model_folder(save, "mnist", model), "Li")).get(pair)
        if got is None:
            continue
        tag = f"{model}_{pair[0]}_{pair[1]}_{pair[2]}"
        lip = cached(study.out / "exact" / f"{tag}_lip_r{small}.json",
                     lambda pair=pair, small=small: exact_lipschitz(models, model, pair, small, study.time_limit))
        out.append({"net": net, "id": pair[0], "target_label": pair[2], "info": r["info"], "radius": radius,
                    "est": r["lipschitz"], "L": r["L"], "small_radius": small, "small_est": fnum(got, "lipschitz"),
                    "small_L": lip["L"], "small_L_status": lip["L_status"], "small_score": fnum(got, "score"),
                    "score": r["score"], "eps": r["eps"]})
    return out


# ---------------------------------------------------------------- the CNNs


def cnn_rows(study: Study, models: Models, runs: list[dict]) -> list[dict]:
    rows = []
    for net, (dataset, model) in CNNS.items():
        n = study.cnn_images[net]
        save = study.out / net.replace(" ", "_")
        record(runs, net, "l2 law", "plain", collect(study, dataset, model, save / "plain",
                                                     ["-N", str(NSAMPS), "-i", str(PLAIN_ITERS)], n))
        attack_csv = save / "cw.csv"
        if not attack_csv.exists():
            cmd = [PYTHON, "attacks.py", "-d", dataset, "-m", model, "-n", str(n), "--target_type", TARGETS,
                   "--attacks", "cw_l2", "--csv", str(attack_csv), "--data_dir", study.data_dirs[dataset]]
            record(runs, net, "", "cw_l2", (run_logged(cmd, study.out / "log.txt"), 0))
        with attack_csv.open() as f:
            attacks = {(int(a["id"]), int(a["target_label"])): a for a in csv.DictReader(f)}
        for r in scores(study, model_folder(save / "plain", dataset, model), "L2"):
            pair = pair_of(r)
            if pair[0] >= n:  # the folder may hold more images from a larger run
                continue
            cert = cached(save / f"cert_L2_{pair[0]}_{pair[1]}_{pair[2]}.json",
                          lambda pair=pair, d=dataset, m=model: certified(models, d, m, pair, L2))
            a = attacks.get((pair[0], pair[2]), {})
            cw = fnum(a, "l2") if str(a.get("success", "")).lower() in ("true", "1") else math.nan
            rows.append({"net": net, "id": pair[0], "true_label": pair[1], "target_label": pair[2], "info": r["info"],
                         "score": fnum(r, "score"), "score_rerun_lo": fnum(r, "score_rerun_lo"),
                         "score_rerun_hi": fnum(r, "score_rerun_hi"), "certified": cert["certified"],
                         "certify_seconds": cert["certify_seconds"], "cw": cw})
            print(f"[validity] {net} pair {pair}: score={rows[-1]['score']:.4g} certified={cert['certified']:.4g} "
                  f"cw={cw:.4g}", flush=True)
    return rows


# ---------------------------------------------------------------- CSV files


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: to_value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def to_value(text: str):
    try:
        return float(text)
    except ValueError:
        return text


# ---------------------------------------------------------------- rendering


def fmt(x: float, digits: int = 3) -> str:
    if isinstance(x, str) or x is None:
        return str(x)
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def med_range(values: list[float], digits: int = 3) -> str:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "-"
    return f"{fmt(float(np.median(v)), digits)} ({fmt(min(v), digits)}-{fmt(max(v), digits)})"


def share(flags: list[bool]) -> str:
    return f"{sum(flags)}/{len(flags)}" + (f" ({sum(flags) / len(flags):.0%})" if flags else "")


def covers(lo: float, hi: float, value: float) -> bool:
    return lo <= value * (1 + 1e-6) and value <= hi * (1 + 1e-6)


LIP_HEADER = ("| network | radius | pairs | L* solved | est/L* without search | with search "
              "| time-limited pairs: est/L* at most, without / with | est >= 0.98 L*, without | with "
              "| end-point interval holds L*, without / with | rerun interval holds L*, without / with "
              "| L* solve s (median, max) | search adds s/pair |\n"
              "|---|---:|---:|---:|---|---|---|---|---|---|---|---|---:|")
EPS_HEADER = ("| network | radius | pairs | eps* solved | score > eps*, without / with search | certified/eps* "
              "| certified/attack | attack/eps* | eps* solve s (median, max) |\n"
              "|---|---:|---:|---:|---|---|---|---|---|")


def summary_lines(rows: list[dict], runs: list[dict]) -> list[str]:
    """Two tables: the Lipschitz estimate against L*, and the score against eps*."""
    groups = [(net, radius, [r for r in rows if r["net"] == net and r["radius"] == radius])
              for net in MLPS for radius in sorted({r["radius"] for r in rows if r["net"] == net})]
    return ([LIP_HEADER] + [lipschitz_line(net, radius, g, runs) for net, radius, g in groups]
            + ["", EPS_HEADER] + [distortion_line(net, radius, g) for net, radius, g in groups])


def lipschitz_bracket(r: dict) -> tuple[float, float]:
    """[L*, L*] where the MILP was solved, else what is proven: [largest norm met in the ball, MILP upper end].

    The lower end is the largest of the MILP's lower bound, the largest sampled norm and the largest
    norm the search found (each is a norm realised at a point of the ball).
    """
    if r["L_status"] == "optimal":
        return r["L"], r["L"]
    found = [x for x in (r["L_lo"], r["sampled_max"], r.get("search_found", math.nan)) if not math.isnan(x)]
    return max(found), r["L_hi"]


def distortion_bracket(r: dict) -> tuple[float, float]:
    """[eps*, eps*] where solved, else [max(MILP lower end, certified radius), min(MILP upper end, attack)]."""
    if r["eps_status"] == "optimal":
        return r["eps"], r["eps"]
    return max(r["eps_lo"], r["certified"]), min(r["eps_hi"], r["attack"])


def reaches(r: dict, prefix: str, share_of: float = 0.98) -> bool | None:
    """Whether the estimate is >= share_of * L* (None: the time-limited bracket leaves it open)."""
    lo, hi = lipschitz_bracket(r)
    est = r[prefix + "lipschitz"]
    return True if est >= share_of * hi * (1 - 1e-9) else False if est < share_of * lo else None


def holds(r: dict, prefix: str, kind: str) -> bool | None:
    """Whether the interval contains L* (None: the bracket straddles one of its ends)."""
    lo, hi = lipschitz_bracket(r)
    a, b = r[f"{prefix}lipschitz{kind}_lo"], r[f"{prefix}lipschitz{kind}_hi"]
    if covers(a, b, lo) and covers(a, b, hi):
        return True
    return False if b * (1 + 1e-6) < lo or a > hi * (1 + 1e-6) else None


def tally(flags: list[bool | None]) -> str:
    """`k/n (share)` over the decided flags, with how many were left open."""
    decided = [f for f in flags if f is not None]
    text = share(decided)
    return text + (f", {len(flags) - len(decided)} open" if len(decided) < len(flags) else "")


def bracket_ratios(group: list[dict], prefix: str) -> str:
    """Over the time-limited pairs, est / (largest norm proven to be met in the ball): an upper bound of est/L*."""
    limited = [r for r in group if r["L_status"] != "optimal"]
    return med_range([r[prefix + "lipschitz"] / lipschitz_bracket(r)[0] for r in limited]) if limited else "-"


def lipschitz_line(net: str, radius: float, group: list[dict], runs: list[dict]) -> str:
    exact = [r for r in group if r["L_status"] == "optimal"]

    def ratios(prefix: str) -> str:
        return med_range([r[prefix + "lipschitz"] / r["L"] for r in exact])

    def hits(prefix: str) -> str:
        return tally([reaches(r, prefix) for r in group])

    def cover(kind: str) -> str:
        return f"{tally([holds(r, '', kind) for r in group])} / {tally([holds(r, 'search_', kind) for r in group])}"

    return (f"| {net} | {fmt(radius)} | {len(group)} | {len(exact)} | {ratios('')} | {ratios('search_')} "
            f"| {bracket_ratios(group, '')} / {bracket_ratios(group, 'search_')} | {hits('')} | {hits('search_')} "
            f"| {cover('')} | {cover('_rerun')} | {times([r['L_seconds'] for r in group])} "
            f"| {search_cost(net, radius, group, runs)} |")


def distortion_line(net: str, radius: float, group: list[dict]) -> str:
    known = [r for r in group if r["eps_status"] == "optimal"]
    over = [claimed_too_much([r[p + "score"] for r in group], group) for p in ("", "search_")]
    return (f"| {net} | {fmt(radius)} | {len(group)} | {len(known)} | {over[0]} / {over[1]} "
            f"| {med_range([r['certified'] / r['eps'] for r in known])} "
            f"| {med_range([r['certified'] / r['attack'] for r in group])} "
            f"| {med_range([r['attack'] / r['eps'] for r in known])} | {times([r['eps_seconds'] for r in group])} |")


def claimed_too_much(score: list[float], group: list[dict]) -> str:
    """`k/n (u open)`: pairs whose score is above eps* (above its proven upper end where eps* is time-limited).

    A time-limited eps* decides the pair when the score lies outside its bracket (distortion_bracket); else
    it is open.
    """
    flags: list[bool | None] = []
    for value, r in zip(score, group):
        lo, hi = distortion_bracket(r)
        flags.append(True if value > hi else False if value <= lo else None)
    return tally(flags)


def times(values: list[float]) -> str:
    return f"{fmt(float(np.median(values)), 3)}, {fmt(max(values), 3)}" if values else "-"


def search_cost(net: str, radius: float, group: list[dict], runs: list[dict]) -> str:
    """(wall time of the search run - the same run without search) / pairs, from the latest runs that collected."""
    def first(kind: str) -> dict | None:
        got = [r for r in runs if r["net"] == net and r["radius"] == radius and r["kind"] == kind and r["new_files"]]
        return got[-1] if got else None

    s, n = first("search"), first("nosearch")
    if s is None or n is None or not group:
        return "-"
    return fmt((s["seconds"] - n["seconds"]) / s["new_files"], 2)


def pair_lines(rows: list[dict]) -> list[str]:
    lines = ["| network | radius | image | target | L* (status) | largest sampled | estimate [end-point] [rerun] "
             "| with search: found, estimate [end-point] [rerun] | eps* | score | score (search) | certified "
             "| attack |",
             "|---|---:|---:|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lstar = fmt(r["L"], 4) if r["L_status"] == "optimal" else f"[{fmt(r['L_lo'], 4)}, {fmt(r['L_hi'], 4)}]"
        eps = fmt(r["eps"], 4) if r["eps_status"] == "optimal" else f"[{fmt(r['eps_lo'], 4)}, {fmt(r['eps_hi'], 4)}]"
        lines.append(
            f"| {r['net']} | {fmt(r['radius'])} | {int(r['id'])} | {r['info']} | {lstar} ({r['L_status']}) "
            f"| {fmt(r['sampled_max'], 4)} | {interval_text(r, '')} | {fmt(r['search_found'], 4)}, "
            f"{interval_text(r, 'search_')} | {eps} | {fmt(r['score'], 4)} | {fmt(r['search_score'], 4)} "
            f"| {fmt(r['certified'], 4)} | {fmt(r['attack'], 4)} |")
    return lines


def interval_text(r: dict, prefix: str) -> str:
    p = prefix + "lipschitz"
    return (f"{fmt(r[p], 4)} [{fmt(r[p + '_lo'], 4)}, {fmt(r[p + '_hi'], 4)}] "
            f"[{fmt(r[p + '_rerun_lo'], 4)}, {fmt(r[p + '_rerun_hi'], 4)}]")


def cnn_lines(rows: list[dict]) -> list[str]:
    lines = ["| network | pairs | certified/CW (median, range) | score/CW | certified <= score | score > CW "
             "| certify s per target (median, max) |", "|---|---:|---|---|---|---|---|"]
    for net in CNNS:
        group = [r for r in rows if r["net"] == net]
        if not group:
            continue
        ok = [r for r in group if not math.isnan(r["cw"])]
        lines.append(f"| {net} | {len(group)} | {med_range([r['certified'] / r['cw'] for r in ok])} "
                     f"| {med_range([r['score'] / r['cw'] for r in ok])} "
                     f"| {share([r['certified'] <= r['score'] for r in group])} "
                     f"| {share([r['score'] > r['cw'] for r in ok])} "
                     f"| {times([r['certify_seconds'] for r in group])} |")
    lines += ["", "| network | image | target | certified L2 | CLEVER L2 score [rerun] | CW L2 |",
              "|---|---:|---|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['net']} | {int(r['id'])} | {r['info']} | {fmt(r['certified'], 4)} | {fmt(r['score'], 4)} "
                     f"[{fmt(r['score_rerun_lo'], 4)}, {fmt(r['score_rerun_hi'], 4)}] | {fmt(r['cw'], 4)} |")
    return lines


def shrink_lines(rows: list[dict], main: list[dict]) -> list[str]:
    """The shrink check; where L* at R is time-limited, est/L* at R is shown as its proven bracket.

    L* grows with the ball, so an exact L* at R' < R is also a lower bound of L* at R.
    """
    if not rows:
        return ["Not measured in this run."]
    lines = ["| image | target | R | est/L* at R | R' = score | est/L* at R' | L* at R' (status) | score at R' | eps* |",
             "|---:|---|---:|---|---:|---:|---|---:|---:|"]
    for r in rows:
        at_r = ratio_at_radius(r, main)
        lines.append(f"| {int(r['id'])} | {r['info']} | {fmt(r['radius'])} | {at_r} "
                     f"| {fmt(r['small_radius'], 4)} | {fmt(r['small_est'] / r['small_L'])} "
                     f"| {fmt(r['small_L'], 4)} ({r['small_L_status']}) | {fmt(r['small_score'], 4)} | {fmt(r['eps'], 4)} |")
    return lines


def ratio_at_radius(r: dict, main: list[dict]) -> str:
    match = [m for m in main if m["net"] == r["net"] and m["radius"] == r["radius"] and m["id"] == r["id"]
             and m["target_label"] == r["target_label"]]
    if not match or match[0]["L_status"] == "optimal":
        return fmt(r["est"] / r["L"])
    lo, hi = lipschitz_bracket(match[0])
    if r["small_L_status"] == "optimal":
        lo = max(lo, r["small_L"])
    return f"[{fmt(r['est'] / hi)}, {fmt(r['est'] / lo)}]"


def render(docs: Path, notes: Path | None) -> None:
    """docs/validity.md from the CSVs (and the hand-written notes file, when there is one)."""
    rows, cnn = read_csv(docs / "validity.csv"), read_csv(docs / "validity_cnn.csv")
    runs, shrink = read_csv(docs / "validity_runs.csv"), read_csv(docs / "validity_shrink.csv")
    default = "# Validity study\n\n{summary}\n\n{pairs}\n\n{cnn}\n\n{shrink}\n"
    text = notes.read_text() if notes and notes.exists() else default
    parts = {"summary": "\n".join(summary_lines(rows, runs)), "pairs": "\n".join(pair_lines(rows)),
             "cnn": "\n".join(cnn_lines(cnn)), "shrink": "\n".join(shrink_lines(shrink, rows)),
             "runs": "\n".join(run_lines(runs)), "search_gradients": f"{search_gradients():,}",
             "search_iters": str(SEARCH_ITERS), "search_budget": f"{SEARCH_ITERS * NSAMPS + search_gradients():,}",
             "plain_budget": f"{PLAIN_BUDGET:,}"}
    for key, value in parts.items():
        text = text.replace("{" + key + "}", value)
    (docs / "validity.md").write_text(text)


def run_lines(runs: list[dict]) -> list[str]:
    lines = ["| network | radius | run | wall s | new files |", "|---|---|---|---:|---:|"]
    return lines + [f"| {r['net']} | {r['radius']} | {r['kind']} | {fmt(r['seconds'], 4)} | {int(r['new_files'])} |"
                    for r in runs]


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=5, help="first MNIST test images for the MLPs")
    p.add_argument("--radii", default="0.02,0.05", help="Linf sampling radii")
    p.add_argument("--out", type=Path, default=ROOT / "lipschitz_mat" / "validity", help="work folder (.mat, caches)")
    p.add_argument("--docs", type=Path, default=ROOT / "docs", help="where the CSVs and validity.md go")
    p.add_argument("--notes", type=Path, default=ROOT / "bench" / "validity_notes.md",
                   help="the doc's text with {summary}, {pairs}, {cnn}, {shrink}, {runs} placeholders")
    p.add_argument("--wide_images", type=int, default=0,
                   help="images for the slower 784-64-64-10 MLP (0: as --images)")
    p.add_argument("--exact_time_limit", type=float, default=60.0, help="seconds per MILP problem")
    p.add_argument("--mnist_cnn_images", type=int, default=5)
    p.add_argument("--cifar_cnn_images", type=int, default=2)
    p.add_argument("--shrink_pairs", type=int, default=4, help="pairs for the radius-shrink check (0: skip)")
    p.add_argument("--skip_cnn", action="store_true")
    p.add_argument("--render_only", action="store_true", help="only render docs/validity.md from the CSVs")
    p.add_argument("--mnist_dir", default=os.environ.get("CLEVER_DATA_DIR", "/work/shared/data/mnist"))
    p.add_argument("--cifar_dir", default="/work/shared/data/cifar10")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render_only:
        render(args.docs, args.notes)
        return
    study = Study(args.out, args.images, tuple(float(r) for r in args.radii.split(",")), args.exact_time_limit,
                  {"MNIST CNN": args.mnist_cnn_images, "CIFAR CNN": args.cifar_cnn_images}, args.shrink_pairs,
                  {"mnist": args.mnist_dir, "cifar": args.cifar_dir})
    study.out.mkdir(parents=True, exist_ok=True)
    models, runs = Models(study.data_dirs), read_csv(args.docs / "validity_runs.csv")
    rows: list[dict] = []
    # Order: the 32-wide MLP, its radius-shrink check and the CNNs before the slow 64-wide MLP, so that
    # a study cut short by time still has every table.
    mlp_stage(study, models, "784-32-32-10", rows, runs, args.docs, args.notes)
    if study.shrink_pairs:
        write_csv(args.docs / "validity_shrink.csv", shrink_rows(study, models, rows, runs))
        save_all(args.docs, args.notes, rows, runs)
    if not args.skip_cnn:
        write_csv(args.docs / "validity_cnn.csv", cnn_rows(study, models, runs))
        save_all(args.docs, args.notes, rows, runs)
    wide = replace(study, images=args.wide_images) if args.wide_images else study
    mlp_stage(wide, models, "784-64-64-10", rows, runs, args.docs, args.notes)


def mlp_stage(study: Study, models: Models, net: str, rows: list[dict], runs: list[dict], docs: Path,
              notes: Path) -> None:
    for radius in study.radii:
        rows += mlp_radius(study, models, net, radius, runs)
        save_all(docs, notes, rows, runs)


def save_all(docs: Path, notes: Path, rows: list[dict], runs: list[dict]) -> None:
    write_csv(docs / "validity.csv", rows)
    write_csv(docs / "validity_runs.csv", runs)
    render(docs, notes)

if __name__ == "__main__":
    main()
