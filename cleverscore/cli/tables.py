"""The paper's Table 2 from attacks.py CSVs and clever.py --csv files, one row per network.

`python3 -m cleverscore.cli.tables`, or the installed `clever-tables`.

Where the CLEVER CSV carries certified radii (collect_gradients.py --certify), Certified L2 and
Linf columns are added, and stderr gets one [ORDER] line per network and norm counting the pairs
that break certified radius <= CLEVER <= CW.

    python3 -m cleverscore.cli.tables --network MNIST-CNN attacks_mnist_normal.csv clever_mnist_normal.csv \\
        --markdown table2.md --csv table2.csv --plot table2.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cleverscore.cli.common import Parser, run_cli
from cleverscore.errors import UsageError
from cleverscore.locations import program_name
from cleverscore.mat_files import check_writable_file, write_atomically, write_failures_reported
from cleverscore.scoring.table_plot import scatter
from cleverscore.scoring.tables import (
    ATTACK_COLUMNS,
    CLEVER_COLUMNS,
    failure_lines,
    markdown,
    per_pair,
    read_table,
    summary,
    violation_lines,
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=program_name(None, __name__), description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", nargs=3, action="append", required=True, metavar=("NAME", "ATTACKS_CSV", "CLEVER_CSV"),
                   help="a table row: its name, an attacks.py CSV and a clever.py --csv file (repeat per network)")
    p.add_argument("--markdown", default="", help="write the markdown tables here (they are always printed)")
    p.add_argument("--csv", default="", help="write the table as CSV here")
    p.add_argument("--plot", default="", help="write the plot (PNG) here: per pair, CLEVER and certified radius against CW")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    outputs = [(flag, path) for flag, path in (("--markdown", args.markdown), ("--csv", args.csv), ("--plot", args.plot))
               if path]
    for flag, path in outputs:
        check_writable_file(path, flag)
    networks, failures = [], []
    for name, attack_csv, clever_csv in args.network:
        attacks = read_table(attack_csv, ATTACK_COLUMNS, "attacks")
        pairs = per_pair(attacks, read_table(clever_csv, CLEVER_COLUMNS, "clever"))
        if not len(pairs):
            raise UsageError(f"{name}: no (image, target) pair is in {Path(clever_csv).name} with every attack successful")
        networks.append((name, pairs))
        failures += failure_lines(name, attacks, pairs)
    table = summary(networks)
    text = markdown(table)
    print(text, end="")
    for line in failures + violation_lines(networks):
        print(line, file=sys.stderr)
    with write_failures_reported(" or ".join(path for _, path in outputs)):
        if args.markdown:
            write_atomically(args.markdown, lambda tmp: Path(tmp).write_text(text))
        if args.csv:
            write_atomically(args.csv, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
        if args.plot:
            scatter(networks, args.plot)
    return 0


def console_main() -> None:
    """The installed console command (pyproject.toml): flags from sys.argv, exit code on the way out."""
    run_cli(main)


if __name__ == "__main__":
    console_main()
