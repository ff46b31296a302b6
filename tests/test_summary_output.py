"""clever.py's default output: the [STATS] lines, one grouped line per kind of warning, and a closing table
whose numbers are the CSV's; the per-file lines come with --verbose."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from conftest import reverse_weibull, run_cli_in_process, write_mat

TABLE_HEAD = re.compile(r"^target\s+norm\s+images\s+CLEVER\s+rerun 95%")


def mixed_folder(folder, certified: bool = False) -> None:
    """Two images x (top2, least): some scores beyond their small sampled ball, one plateau, optional proofs."""
    for image in (0, 1):
        for k, (info, target) in enumerate((("top2", 2), ("least", 4))):
            g2 = reverse_weibull(4, 60, seed=10 * image + k, end=2.0 + image + k, scale=0.3)
            if image == 1 and info == "least":
                g2 = np.full(60, 2.5)  # a plateau
            extra = dict(certified_radius_L1=0.5 + k, certified_radius_L2=0.05 + 0.01 * image,
                         certified_radius_Li=0.002 * (1 + image), attack_distortion_L2=1.5 + k,
                         attack_distortion_Li=0.1, attack_distortion_L1=9.0) if certified else {}
            write_mat(folder / f"64_60_{image}_7_{target}_{info}_relu_order1.mat", g2, g_x0=2.0 + image,
                      target=target, info=info, id=image, ball=("l2", 0.5, 784), **extra)


def table_rows(stdout: str) -> pd.DataFrame:
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if TABLE_HEAD.match(ln))
    header = re.split(r"\s{2,}", lines[start].strip())
    return pd.DataFrame([re.split(r"\s{2,}", ln.strip()) for ln in lines[start + 1:]], columns=header)


def rerun_mean_interval(rows: pd.DataFrame) -> tuple[float, float]:
    from cleverscore.scoring.intervals import mean_interval

    return mean_interval(rows["score"], rows["score_rerun_lo"], rows["score_rerun_hi"])


@pytest.mark.parametrize("flags", [[], ["--min"], ["--cap_radius"]])
def test_the_table_holds_the_csv_numbers(tmp_path, flags):
    folder = tmp_path / "mats"
    folder.mkdir()
    mixed_folder(folder, certified=True)
    res = run_cli_in_process("clever.py", str(folder), "--nthreads", "1", "--csv", str(tmp_path / "s.csv"), *flags)
    assert res.returncode == 0, res.stderr
    csv, table = pd.read_csv(tmp_path / "s.csv"), table_rows(res.stdout)
    assert len(table) == 6 and list(table.columns[-2:]) == ["beyond ball", "plateau"]
    reduce = (lambda s: s.min()) if "--min" in flags else (lambda s: s.mean())
    for _, row in table.iterrows():
        files = csv[(csv["info"] == row["target"]) & (csv["norm"] == row["norm"])]
        scores = np.minimum(files["score"], files["supported_radius"]) if "--cap_radius" in flags else files["score"]
        assert int(row["images"]) == len(files) == 2
        assert float(row["CLEVER"]) == pytest.approx(reduce(scores), rel=1e-4)
        assert float(row["certified"]) == pytest.approx(reduce(files["certified_radius"]), rel=1e-4)
        assert float(row["attack"]) == pytest.approx(reduce(files["attack_distortion"]), rel=1e-4)
        assert row["beyond ball"] == f"{int(files['beyond_ball'].sum())}/2"
        assert row["plateau"] == f"{int(files['plateau'].sum())}/2"
        if not flags:
            lo, hi = (float(v) for v in re.findall(r"[\d.e+-]+", row["rerun 95%"]))
            assert (lo, hi) == pytest.approx(rerun_mean_interval(files), rel=1e-4)
    assert res.stdout.rstrip().splitlines()[-1].startswith("top2")  # the table ends the run


def test_without_proofs_or_attacks_the_table_leaves_their_columns_out(tmp_path):
    mixed_folder(tmp_path)
    res = run_cli_in_process("clever.py", str(tmp_path), "--nthreads", "1")
    table = table_rows(res.stdout)
    assert "certified" not in table.columns and "attack" not in table.columns and len(table) == 6


def test_untargeted_table_takes_each_images_smallest_class_first(tmp_path):
    for target in range(9):
        label = target if target < 7 else target + 1
        write_mat(tmp_path / f"64_60_0_7_{label}_class{label}_relu_order1.mat",
                  reverse_weibull(4, 60, seed=target, end=2.0 + target, scale=0.3), target=label, info=f"class{label}")
    res = run_cli_in_process("clever.py", str(tmp_path), "--nthreads", "1", "--untargeted", "--csv",
                             str(tmp_path / "s.csv"))
    assert res.returncode == 0, res.stderr
    csv, table = pd.read_csv(tmp_path / "s.csv"), table_rows(res.stdout)
    assert list(table["target"]) == ["untargeted"] * 3
    for _, row in table.iterrows():
        assert float(row["CLEVER"]) == pytest.approx(csv[csv["norm"] == row["norm"]]["score"].min(), rel=1e-4)
    assert "[STATS][L1] image =" not in res.stdout  # the per-image lines come with --verbose


def test_grouped_warnings_keep_every_count_and_the_per_file_lines_need_verbose(tmp_path):
    mixed_folder(tmp_path)
    quiet = run_cli_in_process("clever.py", str(tmp_path), "--nthreads", "1")
    loud = run_cli_in_process("clever.py", str(tmp_path), "--nthreads", "1", "--verbose")
    assert quiet.returncode == loud.returncode == 0
    grouped = [ln for ln in quiet.stderr.splitlines() if ln.startswith("[WARNING]")]
    kinds = {"beyond the sampled ball": "is beyond the sampled ball", "plateau(s)": "the maxima repeat one value",
             "fell back to the largest maximum": "ill-conditioned samples"}  # the plateau's constant maxima fit no law
    assert len(grouped) == len(kinds)  # one line per kind, and nothing per file
    for group, per_file in kinds.items():
        line = next(ln for ln in grouped if group in ln)
        total = int(re.match(r"\[WARNING\] (\d+) ", line).group(1))
        parts = [int(n) for n in re.findall(r"\w+/\w+ = (\d+)", line.split(";")[0])]
        assert total == sum(parts) == loud.stderr.count(per_file) > 0
        assert ";" in line and "CSV column" in line  # what it means, and where the files are named
    assert quiet.stdout.count("[DEBUG][L1]") == 0 and loud.stdout.count("[DEBUG][L1]") == 12
    stats = lambda out: [ln for ln in out.splitlines() if ln.startswith("[STATS]")]  # noqa: E731
    assert stats(quiet.stdout) == stats(loud.stdout)  # the summary a script parses is the same either way
