#!/usr/bin/env python3
"""Targeted attacks (Carlini-Wagner L2, I-FGSM) whose distortions bound CLEVER scores from above.

The command line lives in `cleverscore/cli/attack.py`; `python3 attacks.py --help` lists its flags.
"""

from cleverscore.cli.attack import main
from cleverscore.cli.common import run_cli

if __name__ == "__main__":
    run_cli(main)
