"""The Table 2 builder on small fixed CSVs."""

from __future__ import annotations

import pandas as pd

from conftest import run_script

ATTACKS = """id,true_label,target_label,info,attack,success,l2,linf
0,7,1,top2,cw_l2,True,1.0,0.25
1,2,3,top2,cw_l2,True,2.0,0.35
0,7,1,top2,ifgsm_l2,True,1.5,0.3
1,2,3,top2,ifgsm_l2,True,2.5,0.4
0,7,1,top2,ifgsm_li,True,3.0,0.125
1,2,3,top2,ifgsm_li,True,3.5,0.175
0,7,5,least,cw_l2,True,3.0,0.5
0,7,5,least,ifgsm_l2,True,4.0,0.6
0,7,5,least,ifgsm_li,True,5.0,0.2
1,2,9,least,cw_l2,False,inf,inf
1,2,9,least,ifgsm_l2,True,4.0,0.6
1,2,9,least,ifgsm_li,True,5.0,0.2
"""

CLEVER = """file,id,true_label,target_label,info,norm,g_x0,score,lipschitz,shape,loc,scale,ks,pVal,method,order
a.mat,0,7,1,top2,L1,1,2.0,1,1,1,1,0,1,mle_reg,1
a.mat,0,7,1,top2,L2,1,0.5,1,1,1,1,0,1,mle_reg,1
a.mat,0,7,1,top2,Li,1,0.05,1,1,1,1,0,1,mle_reg,1
b.mat,1,2,3,top2,L2,1,0.75,1,1,1,1,0,1,mle_reg,1
b.mat,1,2,3,top2,Li,1,0.15,1,1,1,1,0,1,mle_reg,1
c.mat,0,7,5,least,L2,1,1.25,1,1,1,1,0,1,mle_reg,1
c.mat,0,7,5,least,Li,1,0.1,1,1,1,1,0,1,mle_reg,1
d.mat,1,2,9,least,L2,1,1.5,1,1,1,1,0,1,mle_reg,1
d.mat,1,2,9,least,Li,1,0.2,1,1,1,1,0,1,mle_reg,1
e.mat,1,2,3,top2,L2,1,9.0,1,1,1,1,0,1,mle_reg,2
"""

EXPECTED = """### Least likely target

| Network | n | CW L2 | CW Linf | I-FGSM L2 | I-FGSM Linf | CLEVER L2 | CLEVER Linf |
|---|---:|---:|---:|---:|---:|---:|---:|
| MNIST-CNN | 1 | 3.000 | 0.500 | 4.000 | 0.200 | 1.250 | 0.100 |
| Copy | 1 | 3.000 | 0.500 | 4.000 | 0.200 | 1.250 | 0.100 |

### Top-2 target

| Network | n | CW L2 | CW Linf | I-FGSM L2 | I-FGSM Linf | CLEVER L2 | CLEVER Linf |
|---|---:|---:|---:|---:|---:|---:|---:|
| MNIST-CNN | 2 | 1.500 | 0.300 | 2.000 | 0.150 | 0.625 | 0.100 |
| Copy | 2 | 1.500 | 0.300 | 2.000 | 0.150 | 0.625 | 0.100 |
"""


def test_table_builder_prints_the_exact_markdown_and_writes_csv_and_plot(tmp_path):
    (tmp_path / "a.csv").write_text(ATTACKS)
    (tmp_path / "c.csv").write_text(CLEVER)
    a, c = str(tmp_path / "a.csv"), str(tmp_path / "c.csv")
    res = run_script("-m", "cleverscore.cli.tables", "--network", "MNIST-CNN", a, c, "--network", "Copy", a, c,
                     "--markdown", str(tmp_path / "t.md"), "--csv", str(tmp_path / "t.csv"),
                     "--plot", str(tmp_path / "t.png"))
    assert res.returncode == 0, res.stderr
    # image 1's least-likely pair drops out (CW failed on it); the order-2 row is ignored
    assert res.stdout == EXPECTED
    assert (tmp_path / "t.md").read_text() == EXPECTED
    table = pd.read_csv(tmp_path / "t.csv")
    assert list(table.target) == ["least", "top2", "least", "top2"]
    assert table.loc[1, "clever_l2"] == 0.625 and table.loc[1, "n"] == 2
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_builder_rejects_a_csv_without_the_needed_columns(tmp_path):
    (tmp_path / "a.csv").write_text("id,info\n0,top2\n")
    (tmp_path / "c.csv").write_text(CLEVER)
    res = run_script("-m", "cleverscore.cli.tables", "--network", "X", str(tmp_path / "a.csv"), str(tmp_path / "c.csv"))
    assert res.returncode == 2
    assert "lacks column(s) attack, success, l2, linf" in res.stderr and "Traceback" not in res.stderr


def with_radii(clever: str, radii: dict[tuple[str, str], float]) -> str:
    """The CLEVER CSV with a certified_radius column: radii[(file, norm)], empty elsewhere."""
    lines = clever.strip().split("\n")
    out = [lines[0] + ",certified_radius"]
    for line in lines[1:]:
        cells = line.split(",")
        value = radii.get((cells[0], cells[5]))
        out.append(line + "," + ("" if value is None else repr(value)))
    return "\n".join(out) + "\n"


def test_certified_radii_add_columns_and_the_order_lines_flag_violations(tmp_path):
    # top2: both pairs certified; least: its one pair only in L2, so Linf reads "not certified".
    # b.mat's Linf radius 0.4 exceeds its CW Linf 0.35: a proof contradicted, which must be flagged.
    radii = {("a.mat", "L2"): 0.25, ("a.mat", "Li"): 0.01, ("b.mat", "L2"): 0.5, ("b.mat", "Li"): 0.4,
             ("c.mat", "L2"): 1.0}
    (tmp_path / "a.csv").write_text(ATTACKS)
    (tmp_path / "c.csv").write_text(with_radii(CLEVER, radii))
    (tmp_path / "u.csv").write_text(CLEVER)
    res = run_script("-m", "cleverscore.cli.tables", "--network", "Cert", str(tmp_path / "a.csv"), str(tmp_path / "c.csv"),
                     "--network", "Plain", str(tmp_path / "a.csv"), str(tmp_path / "u.csv"),
                     "--csv", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "t.png"))
    assert res.returncode == 0, res.stderr
    assert "| CLEVER Linf | Certified L2 | Certified Linf |" in res.stdout
    assert "| Cert | 1 | 3.000 | 0.500 | 4.000 | 0.200 | 1.250 | 0.100 | 1.000 | — |" in res.stdout
    assert "| Cert | 2 | 1.500 | 0.300 | 2.000 | 0.150 | 0.625 | 0.100 | 0.375 | 0.205 |" in res.stdout
    assert "| Plain | 2 | 1.500 | 0.300 | 2.000 | 0.150 | 0.625 | 0.100 | — | — |" in res.stdout
    table = pd.read_csv(tmp_path / "t.csv")
    assert table.cert_l2.tolist()[:2] == [1.0, 0.375] and table.cert_linf.isna().tolist() == [True, False, True, True]
    # CLEVER is below CW everywhere here; c.mat's L2 CLEVER 1.25 is above its radius 1.0 (fine)
    assert "[ORDER] Cert L2: 3 pairs, 3 certified; CLEVER above CW on 0 (overstated), below the certified " \
           "radius on 0; certified above CW on 0" in res.stderr
    assert "[ORDER] Cert Linf: 3 pairs, 2 certified; CLEVER above CW on 0 (overstated), below the certified " \
           "radius on 1; certified above CW on 1" in res.stderr
    assert "[WARNING] Cert Linf: the certified radius exceeds the CW distortion on 1 pair(s)" in res.stderr
    assert "[WARNING] Cert L2" not in res.stderr and "[WARNING] Plain" not in res.stderr
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_certified_radius_that_is_not_a_number_is_a_one_line_error(tmp_path):
    (tmp_path / "a.csv").write_text(ATTACKS)
    (tmp_path / "c.csv").write_text(with_radii(CLEVER, {("a.mat", "L2"): 0.25}).replace("0.25\n", "big\n"))
    res = run_script("-m", "cleverscore.cli.tables", "--network", "X", str(tmp_path / "a.csv"), str(tmp_path / "c.csv"))
    assert res.returncode == 2
    assert "certified_radius column holds a non-number ('big')" in res.stderr and "Traceback" not in res.stderr


def test_a_failed_attack_is_reported_where_the_table_leaves_its_pair_out(tmp_path):
    (tmp_path / "a.csv").write_text(ATTACKS)
    (tmp_path / "c.csv").write_text(CLEVER)
    res = run_script("-m", "cleverscore.cli.tables", "--network", "MNIST-CNN", str(tmp_path / "a.csv"),
                     str(tmp_path / "c.csv"))
    assert res.returncode == 0, res.stderr
    assert "[PAIRS] MNIST-CNN: cw_l2 failed on 1 of 2 least pairs; the table leaves them out (1 least pairs kept)" \
        in res.stderr


# Rows of attacks.py --attacks pgd_li,ddn_l2,best: no CW or I-FGSM rows; best takes the smaller distortions.
BEST_ATTACKS = """id,true_label,target_label,info,attack,success,l2,linf,l1,seconds,best_of
0,7,1,top2,pgd_li,True,1.2,0.1,9.0,1.0,
1,2,3,top2,pgd_li,True,2.2,0.12,9.0,1.0,
0,7,1,top2,ddn_l2,True,0.9,0.2,5.0,1.0,
1,2,3,top2,ddn_l2,True,0.7,0.3,5.0,1.0,
0,7,1,top2,best,True,0.9,0.1,5.0,2.0,l1=ddn_l2 l2=ddn_l2 linf=pgd_li
1,2,3,top2,best,True,0.7,0.12,5.0,2.0,l1=ddn_l2 l2=ddn_l2 linf=pgd_li
"""


def test_best_rows_add_best_columns_and_the_order_is_checked_against_them(tmp_path):
    (tmp_path / "a.csv").write_text(BEST_ATTACKS)
    (tmp_path / "c.csv").write_text(CLEVER)
    res = run_script("-m", "cleverscore.cli.tables", "--network", "N", str(tmp_path / "a.csv"), str(tmp_path / "c.csv"),
                     "--csv", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "t.png"))
    assert res.returncode == 0, res.stderr
    assert "| CLEVER Linf | Best L2 | Best Linf |" in res.stdout
    # the attacks the CSV does not hold read as empty; b.mat's CLEVER L2 0.75 is above best's 0.7
    assert "| N | 2 | — | — | — | — | 0.625 | 0.100 | 0.800 | 0.110 |" in res.stdout
    assert "[ORDER] N L2: 2 pairs, 0 certified; CLEVER above best on 1 (overstated)" in res.stderr
    assert "[ORDER] N Linf: 2 pairs, 0 certified; CLEVER above best on 1 (overstated)" in res.stderr
    table = pd.read_csv(tmp_path / "t.csv")
    assert table.best_l2.tolist() == [0.8] and table.cw_l2.isna().all()
