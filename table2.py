#!/usr/bin/env python3
"""The paper's Table 2: attack distortions next to CLEVER scores, per network and target type.

The command line lives in `cleverscore/cli/tables.py`; `python3 table2.py --help` lists its flags.
"""

from cleverscore.cli.tables import console_main

if __name__ == "__main__":
    console_main()
