#!/usr/bin/env python3
"""Train N-layer MLPs and 7-layer CNNs with a chosen activation.

The command line lives in `cleverscore/cli/train_nlayer.py`; `python3 train_nlayer.py --help` lists its flags.
"""

from cleverscore.cli.train_nlayer import console_main

if __name__ == "__main__":
    console_main()
