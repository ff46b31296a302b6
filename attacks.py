#!/usr/bin/env python3
"""Attacks (minimal-distortion PGD, FAB, DDN, Carlini-Wagner L2, I-FGSM) whose distortions bound eps* from above.

The command line lives in `cleverscore/cli/attack.py`; `python3 attacks.py --help` lists its flags.
"""

from cleverscore.cli.attack import console_main

if __name__ == "__main__":
    console_main()
