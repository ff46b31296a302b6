#!/usr/bin/env python3
"""The paper's Table 2: attack distortions next to CLEVER scores, per network and target type.

The command line lives in `cleverscore/cli/tables.py`; `python3 tables.py --help` lists its flags.
"""

from cleverscore.cli.common import run_cli
from cleverscore.cli.tables import main

if __name__ == "__main__":
    run_cli(main)
