#!/usr/bin/env python3
"""Will the MNIST (or CIFAR-10) CNN become more robust with defense X? CLEVER, attacks and certified radii side by side.

A = the normal CNN (`-m normal`); B = each defense: the zoo's adversarially trained CNNs (MNIST:
`adv_0.1`, `adv_0.3`; CIFAR: `adv_0.008`), `distilled`, `brelu`, and the normal CNN behind each
`--transform` (BPDA). `--dataset` picks the data and the adversarially trained names; the code path
is the same for both. Per (A, B) and norm:
- `clever.py --compare A B` on folders collected with `--attacks`: CLEVER's B/A with its rerun
  interval, the attack B/A (the attacks' minimal distortions) and the final verdict;
- `clever.py --compare` on smaller folders collected with `--certify` (cheap sampling: only the
  certified radii are used): the certified B/A. Not for transforms (CROWN would certify the bare CNN);
- the truth call from the found and proven sides alone: more robust when the attacks' distortion
  and the certified radius both rise >= 1.2x, not more robust when the attacks rise < 1.1x.

Every step is a subprocess of the project's command lines, resumable (collect_gradients.py skips
finished files), each timed; `docs/defenses.md` (CIFAR: `docs/defenses_cifar.md`) gets the table,
the times and the commands. `--only` runs some defenses; a later run without it (or naming the rest)
resumes the finished ones and reports them all.

    python3 bench/defenses.py --data_dir ../shared/data/mnist --markdown docs/defenses.md
    python3 bench/defenses.py --dataset cifar --data_dir ../shared/data/cifar10 --markdown docs/defenses_cifar.md
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
sys.path.insert(0, str(ROOT))

from cleverscore.sampling.transforms import TRANSFORMS  # noqa: E402 - after the checkout is on the path

BASELINE = "normal"
MORE, NOT_MORE = 1.2, 1.1  # the truth call's thresholds on the attack (and certified) ratios
NORMS = ("L2", "Li", "L1")
NOTES = "<!-- notes: the text below this line is kept when the script rewrites the report -->\n"


# Per dataset: its name in the report and the zoo's adversarially trained CNNs (Linf radius in input units).
DATASETS = {"mnist": "MNIST", "cifar": "CIFAR-10"}
ADVERSARIAL = {"mnist": ("adv_0.1", "adv_0.3"), "cifar": ("adv_0.008",)}


@dataclass(frozen=True)
class Defense:
    name: str
    flags: tuple[str, ...]  # collect_gradients.py's model flags
    main: bool  # collected on the larger image count (the adversarially trained models)
    certifiable: bool  # --certify applies (a Keras model without a transformation)


def defenses(dataset: str) -> tuple[Defense, ...]:
    """The study's B models for `dataset`, in the report's order: adversarially trained, distilled, BReLU, transforms."""
    return (
        *(Defense(name, ("-m", name), True, True) for name in ADVERSARIAL[dataset]),
        Defense("distilled", ("-m", "distilled"), False, True),
        Defense("brelu", ("-m", "brelu"), False, True),
        *(Defense(name, ("-m", "normal", "--transform", name), False, False) for name in TRANSFORMS),
    )


BASE = Defense(BASELINE, ("-m", "normal"), True, True)
DEFENSES = defenses("mnist")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mnist",
                   help="the data and its zoo models (the adversarially trained names differ)")
    p.add_argument("--data_dir", required=True, help="the dataset's folder (collect_gradients.py --data_dir)")
    p.add_argument("--out", default="",
                   help="work folder (resumable; default bench/results/defenses, for CIFAR bench/results/defenses_cifar)")
    p.add_argument("--images", type=int, default=20, help="images for the normal and adversarially trained CNNs")
    p.add_argument("--images_other", type=int, default=8, help="images for the other defenses")
    p.add_argument("--certified_images", type=int, default=2, help="images certified per model (0: none)")
    p.add_argument("--certified_for", default="",
                   help="comma-separated models to certify (certifiable ones only; default: normal and the "
                        "adversarially trained ones)")
    p.add_argument("-N", "--Nsamps", type=int, default=128)
    p.add_argument("-i", "--Niters", type=int, default=50)
    p.add_argument("--only", default="", help="comma-separated defenses (default: all)")
    p.add_argument("--markdown", default="", help="write the report here (e.g. docs/defenses.md)")
    args = p.parse_args(argv)
    names = [d.name for d in defenses(args.dataset)]
    unknown = [n for n in filter(None, args.only.split(",")) if n not in names]
    if unknown:
        p.error(f"--only: no defense {', '.join(unknown)} for {args.dataset}; choose among {', '.join(names)}")
    if not args.out:
        args.out = str(ROOT / ("bench/results/defenses" + ("" if args.dataset == "mnist" else f"_{args.dataset}")))
    if not args.certified_for:
        args.certified_for = ",".join((BASELINE, *ADVERSARIAL[args.dataset]))
    return args


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
    common = ["collect_gradients.py", "-d", args.dataset, *defense.flags, "-n", images, "--target_type", 1,
              "--data_dir", args.data_dir, "-s", save, "--quiet"]
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
    every = defenses(args.dataset)
    chosen = [d for d in every if not args.only or d.name in args.only.split(",")]
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
    goals = goal_lines(rows, ADVERSARIAL[args.dataset])
    for line in goals:
        print(line)
    (out / "table.json").write_text(json.dumps(rows, indent=1))
    if args.markdown:
        path = Path(args.markdown)
        notes = path.read_text().partition(NOTES)[2] if path.exists() else ""
        left_out = [d.name for d in every if d not in chosen]
        path.write_text(report(args, rows, goals, runner, certified, total, left_out) + "\n" + NOTES + notes)
        print(f"wrote {args.markdown}")
    return 0


def goal_lines(rows: list[dict], adversarial: tuple[str, ...]) -> list[str]:
    """The issue's two goals, checked on the table (`adversarial`: the adversarially trained CNNs' names)."""
    lines = []
    for name in adversarial:
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


def study_command(args) -> str:
    """The command line that reruns this study (the flags that differ from the defaults, and the report's path)."""
    defaults = parse_args(["--dataset", args.dataset, "--data_dir", args.data_dir])
    words = ["python3", "bench/defenses.py"] + (["--dataset", args.dataset] if args.dataset != "mnist" else [])
    words += ["--data_dir", args.data_dir]
    if Path(args.out).resolve() != Path(defaults.out).resolve():
        words += ["--out", shown_path(Path(args.out).resolve())]
    for flag in ("images", "images_other", "certified_images", "certified_for", "Nsamps", "Niters", "only"):
        if getattr(args, flag) != getattr(defaults, flag) and not (flag == "certified_for" and not args.certified_images):
            words += [f"--{flag}", str(getattr(args, flag))]
    if args.markdown:
        words += ["--markdown", shown_path(Path(args.markdown).resolve())]
    return " ".join(shlex.quote(w) for w in words)


def report(args, rows, goals, runner: Runner, certified, total: float, left_out=()) -> str:
    times = runner.times
    data = DATASETS[args.dataset]
    main_names = ", ".join((BASELINE, *ADVERSARIAL[args.dataset]))
    head = [
        f"# Is defense X worth it? The {data} CNN against its defenses",
        "",
        "Generated by `bench/defenses.py` (the numbers below are this run's; the prose around them is the script's).",
        f"{data} test images. A = the normal CNN (`-m normal`), B = each defense. Top-2 targets; "
        f"CLEVER `-N {args.Nsamps} -i {args.Niters}`"
        f" on {args.images} images ({main_names}) or {args.images_other} (the others); attacks "
        "`collect_gradients.py --attacks` (pgd_li, ddn_l2, fab_l1: the best distortion per norm over the three, "
        "through the transformation by BPDA where there is one); "
        + (f"certified radii (`--certify`) on the first {args.certified_images} images of "
           f"{', '.join(sorted(certified))} only, for their cost." if certified
           else "no certified radii (`--certified_images 0`)."),
        "",
        "Columns: CLEVER B/A with its rerun interval (`clever.py --compare`, default `--compare_bound rerun`); "
        "attack B/A: the ratio of the mean best-attack distortions, with its image-bootstrap interval; certified "
        "B/A likewise (on the certified images); the final verdict as `--compare` prints it; exit: the status of "
        "that `--compare` as a whole, all three norms (3: some norm's verdict is contradicted by the evidence; "
        "the images only A has are left out of the pairs, which does not change it); the truth call from attacks "
        "and certified radii alone: "
        f"**more robust** when both rise >= {MORE}x, **not more robust** when the attacks rise < {NOT_MORE}x.",
        "",
        *([f"Not in this run (`--only`): {', '.join(left_out)}; a later run naming them resumes the rest.", ""]
          if left_out else []),
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
    commands = ["", "## Commands", "", f"From a fresh clone (the {data} files in `--data_dir`):", "", "```bash",
                study_command(args), "```", "",
                "which runs, single-threaded (`TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1`):", "", "```bash",
                *runner.commands, "```"]
    goals = goals or ["- none to check in this run (no adversarially trained CNN, no row whose attacks show < "
                      f"{NOT_MORE}x)"]
    return "\n".join(head + body + ["", "## Goals", "", *goals] + timing + commands) + "\n"


if __name__ == "__main__":
    sys.exit(main())
