#!/usr/bin/env python3
"""Will the MNIST CNN become more robust with defense X? CLEVER, attacks and certified radii side by side.

A = the normal CNN (`-m normal`); B = each defense: the zoo's `distilled`, `brelu`, `adv_0.1`,
`adv_0.3`, and the normal CNN behind each `--transform` (BPDA). Per (A, B) and norm:
- `clever.py --compare A B` on folders collected with `--attacks`: CLEVER's B/A with its rerun
  interval, the attack B/A (the attacks' minimal distortions) and the final verdict;
- `clever.py --compare` on smaller folders collected with `--certify` (cheap sampling: only the
  certified radii are used): the certified B/A. Not for transforms (CROWN would certify the bare CNN);
- the truth call from the found and proven sides alone: more robust when the attacks' distortion
  and the certified radius both rise >= 1.2x, not more robust when the attacks rise < 1.1x.

Every step is a subprocess of the project's command lines, resumable (collect_gradients.py skips
finished files), each timed; `docs/defenses.md` gets the table, the times and the commands.

    python3 bench/defenses.py --data_dir ../shared/data/mnist --markdown docs/defenses.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "normal"
MORE, NOT_MORE = 1.2, 1.1  # the truth call's thresholds on the attack (and certified) ratios
NORMS = ("L2", "Li", "L1")
NOTES = "<!-- notes: the text below this line is kept when the script rewrites the report -->\n"


@dataclass(frozen=True)
class Defense:
    name: str
    flags: tuple[str, ...]  # collect_gradients.py's model flags
    main: bool  # collected on the larger image count (the adversarially trained models)
    certifiable: bool  # --certify applies (a Keras model without a transformation)


DEFENSES = (
    Defense("adv_0.1", ("-m", "adv_0.1"), True, True),
    Defense("adv_0.3", ("-m", "adv_0.3"), True, True),
    Defense("distilled", ("-m", "distilled"), False, True),
    Defense("brelu", ("-m", "brelu"), False, True),
    Defense("defend_reduce", ("-m", "normal", "--transform", "defend_reduce"), False, False),
    Defense("defend_jpeg", ("-m", "normal", "--transform", "defend_jpeg"), False, False),
    Defense("defend_png", ("-m", "normal", "--transform", "defend_png"), False, False),
)
BASE = Defense(BASELINE, ("-m", "normal"), True, True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="the MNIST folder (collect_gradients.py --data_dir)")
    p.add_argument("--out", default=str(ROOT / "bench/results/defenses"), help="work folder (resumable)")
    p.add_argument("--images", type=int, default=20, help="images for the normal and adversarially trained CNNs")
    p.add_argument("--images_other", type=int, default=8, help="images for the other defenses")
    p.add_argument("--certified_images", type=int, default=2, help="images certified per model (0: none)")
    p.add_argument("--certified_for", default="normal,adv_0.1,adv_0.3",
                   help="comma-separated models to certify (certifiable ones only)")
    p.add_argument("-N", "--Nsamps", type=int, default=128)
    p.add_argument("-i", "--Niters", type=int, default=50)
    p.add_argument("--only", default="", help="comma-separated defenses (default: all)")
    p.add_argument("--markdown", default="", help="write the report here (e.g. docs/defenses.md)")
    return p.parse_args(argv)


class Runner:
    """Runs the project's command lines one after another, single-threaded, timing each (kept in times.json)."""

    def __init__(self, out: Path):
        self.out, self.times_path = out, out / "times.json"
        self.times = json.loads(self.times_path.read_text()) if self.times_path.exists() else {}
        self.commands: list[str] = []
        self.env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")

    def run(self, key: str, args: list, ok=(0,)) -> subprocess.CompletedProcess:
        shown = "python3 " + " ".join(shlex.quote(shown_path(a)) for a in args)
        self.commands.append(shown)
        print(f"[{time.strftime('%H:%M:%S')}] {shown}", flush=True)
        begin = time.perf_counter()
        res = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=self.env, capture_output=True, text=True)
        seconds = time.perf_counter() - begin
        if res.returncode not in ok:
            sys.exit(f"error: {shown} exited with {res.returncode}:\n{res.stderr[-3000:]}")
        # A resumed step that found nothing to do keeps the time of the run that did the work.
        if "saved 0 " not in res.stdout + res.stderr or key not in self.times:
            self.times[key] = seconds
        self.times_path.write_text(json.dumps(self.times, indent=1))
        return res


def shown_path(arg) -> str:
    """A path under the checkout as it is written from its root (the commands are run from there)."""
    if isinstance(arg, Path) and arg.is_absolute() and ROOT in arg.parents:
        return str(arg.relative_to(ROOT))
    return str(arg)


def collect(runner: Runner, args, defense: Defense, images: int, kind: str) -> Path:
    """collect_gradients.py for one model: `main` (CLEVER + attacks) or `certified` (radii, cheap sampling)."""
    save = Path(args.out).resolve() / kind / defense.name
    common = ["collect_gradients.py", *defense.flags, "-n", images, "--target_type", 1, "--data_dir", args.data_dir,
              "-s", save, "--quiet"]
    if kind == "main":
        extra = ["-N", args.Nsamps, "-i", args.Niters, "--attacks"]
    else:
        extra = ["-N", 16, "-i", 5, "--certify"]
    runner.run(f"{kind}/{defense.name}", common + extra)
    (folder,) = [p for p in save.iterdir() if p.is_dir()]
    return folder


def compare(runner: Runner, args, a: Path, b: Path, key: str) -> tuple[dict, int]:
    """`clever.py --compare a b`: its summary rows by norm (top-2 targets) and its exit status."""
    path = Path(args.out).resolve() / "compare" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    res = runner.run(f"compare/{key}", ["clever.py", "--compare", a, b, "--json", path], ok=(0, 1, 3))
    rows = {r["norm"]: r for r in json.loads(path.read_text())["summary"] if r["info"] == "top2"}
    return rows, res.returncode


def mean_key(folder: Path, key: str) -> float:
    import numpy as np
    import scipy.io as sio

    values = [float(np.squeeze(sio.loadmat(f, variable_names=[key])[key])) for f in sorted(folder.glob("*.mat"))]
    return float(np.mean(values)) if values else math.nan


def truth(attack: float | None, certified: float | None) -> str:
    """The call from the found and proven sides alone (no CLEVER)."""
    if attack is None:
        return "unknown (no attack distortion)"
    if attack < NOT_MORE:
        return "not more robust"
    if attack >= MORE and certified is not None and certified >= MORE:
        return "more robust"
    if attack >= MORE and certified is None:
        return "more robust by attacks (not certified)"
    return "unclear"


def fmt(value, lo=None, hi=None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = f"{value:.2f}"
    return text if lo is None else f"{text} [{lo:.2f}, {hi:.2f}]"


def bare_more_robust(verdict: str) -> bool:
    """A "B is more robust" the evidence did not contradict (agrees, or rests on CLEVER alone)."""
    return verdict.startswith("B is more robust") and " but " not in verdict


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out)
    chosen = [d for d in DEFENSES if not args.only or d.name in args.only.split(",")]
    certify_names = set(args.certified_for.split(",")) if args.certified_images else set()
    begin = time.perf_counter()
    folders = {BASELINE: collect(runner, args, BASE, args.images, "main")}
    for d in chosen:
        folders[d.name] = collect(runner, args, d, args.images if d.main else args.images_other, "main")
    certified = {}
    for d in (BASE, *chosen):
        if d.certifiable and d.name in certify_names:
            certified[d.name] = collect(runner, args, d, args.certified_images, "certified")
    rows = []
    for d in chosen:
        main_rows, status = compare(runner, args, folders[BASELINE], folders[d.name], d.name)
        cert_rows = {}
        if d.name in certified and BASELINE in certified:
            cert_rows, _ = compare(runner, args, certified[BASELINE], certified[d.name], f"{d.name}_certified")
        for norm in NORMS:
            r, c = main_rows.get(norm), cert_rows.get(norm, {})
            if r is None:
                continue
            attack = r.get("attack_ratio")
            cert = c.get("certified_ratio")
            rows.append({
                "defense": d.name, "norm": norm, "pairs": r["pairs"],
                "clever": fmt(r["ratio"], r["ratio_lo"], r["ratio_hi"]), "clever_ratio": r["ratio"],
                "verdict": r["final_verdict"], "exit": status,
                "attack": fmt(attack, r.get("attack_lo"), r.get("attack_hi")) if attack is not None else "—",
                "attack_ratio": attack,
                "certified": (fmt(cert, c.get("certified_lo"), c.get("certified_hi")) + f" ({c['pairs']} img)"
                              if cert is not None else "—"),
                "certified_ratio": cert,
                "truth": truth(attack, cert),
                "attack_seconds_b": mean_key(folders[d.name], "attack_seconds"),
            })
    total = time.perf_counter() - begin
    goals = goal_lines(rows)
    for line in goals:
        print(line)
    (out / "table.json").write_text(json.dumps(rows, indent=1))
    if args.markdown:
        path = Path(args.markdown)
        notes = path.read_text().partition(NOTES)[2] if path.exists() else ""
        path.write_text(report(args, rows, goals, runner, folders, certified, total) + "\n" + NOTES + notes)
        print(f"wrote {args.markdown}")
    return 0


def goal_lines(rows: list[dict]) -> list[str]:
    """The issue's two goals, checked on the table."""
    lines = []
    for name in ("adv_0.1", "adv_0.3"):
        for norm in ("L2", "Li"):
            r = next((x for x in rows if x["defense"] == name and x["norm"] == norm), None)
            if r is None:
                continue
            says = r["verdict"].startswith("B is more robust") and " but " not in r["verdict"]
            backed = (r["attack_ratio"] or 0) >= MORE and (r["certified_ratio"] or 0) >= MORE
            lines.append(f"- {name} {norm}: --compare at {r['pairs']} images says more robust: {'yes' if says else 'no'}"
                         f"; attacks and certified both >= {MORE}x: {'yes' if backed else 'no'} "
                         f"(attack {fmt(r['attack_ratio'])}, certified {fmt(r['certified_ratio'])})")
    for r in rows:
        if r["attack_ratio"] is not None and r["attack_ratio"] < NOT_MORE:
            ok = not bare_more_robust(r["verdict"])
            lines.append(f"- {r['defense']} {r['norm']}: attacks show no gain ({fmt(r['attack_ratio'])}x); final verdict "
                         f"never a bare \"more robust\": {'yes' if ok else 'NO'} ({r['verdict']})")
    return lines


def report(args, rows, goals, runner: Runner, folders, certified, total: float) -> str:
    times = runner.times
    head = [
        "# Is defense X worth it? The MNIST CNN against its defenses",
        "",
        "Generated by `bench/defenses.py` (the numbers below are this run's; the prose around them is the script's).",
        f"A = the normal CNN (`-m normal`), B = each defense. Top-2 targets; CLEVER `-N {args.Nsamps} -i {args.Niters}`"
        f" on {args.images} images (normal, adv_0.1, adv_0.3) or {args.images_other} (the others); attacks "
        "`collect_gradients.py --attacks` (pgd_li, ddn_l2, fab_l1: the best distortion per norm over the three, "
        "through the transformation by BPDA where there is one); certified radii (`--certify`) on the first "
        f"{args.certified_images} images of {', '.join(sorted(certified))} only, for their cost.",
        "",
        "Columns: CLEVER B/A with its rerun interval (`clever.py --compare`, default `--compare_bound rerun`); "
        "attack B/A: the ratio of the mean best-attack distortions, with its image-bootstrap interval; certified "
        "B/A likewise (on the certified images); the final verdict as `--compare` prints it; exit: the status of "
        "that `--compare` as a whole, all three norms (3: some norm's verdict is contradicted by the evidence; "
        "the images only A has are left out of the pairs, which does not change it); the truth call from attacks "
        "and certified radii alone: "
        f"**more robust** when both rise >= {MORE}x, **not more robust** when the attacks rise < {NOT_MORE}x.",
        "",
        "| B | norm | pairs | CLEVER B/A [rerun] | attack B/A | certified B/A | `--compare` verdict | exit | truth |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    body = [f"| {r['defense']} | {r['norm']} | {r['pairs']} | {r['clever']} | {r['attack']} | {r['certified']} | "
            f"{r['verdict']} | {r['exit']} | {r['truth']} |" for r in rows]
    timing = ["", "## Times", "",
              f"The study: {sum(times.values()):.0f} s in all, the sum of its steps, each timed when it did its work "
              "(2-core VM shared with other developers' jobs, one thread per job; steps run one after another). "
              f"A rerun resumes finished steps (this invocation: {total:.0f} s).", "",
              "| step | seconds |", "|---|---|"]
    timing += [f"| {k} | {v:.0f} |" for k, v in sorted(times.items())]
    timing += ["", "Mean attack time per (image, target) of each B "
               "(`attack_seconds`): " + ", ".join(f"{r['defense']} {r['attack_seconds_b']:.1f} s"
                                                   for r in rows if r["norm"] == "L2") + "."]
    commands = ["", "## Commands", "", "From a fresh clone (the MNIST files in `--data_dir`):", "", "```bash",
                "python3 bench/defenses.py --data_dir ../shared/data/mnist --markdown docs/defenses.md", "```", "",
                "which runs, single-threaded (`TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1`):", "", "```bash",
                *runner.commands, "```"]
    return "\n".join(head + body + ["", "## Goals", "", *goals] + timing + commands) + "\n"


if __name__ == "__main__":
    sys.exit(main())
