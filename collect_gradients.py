#!/usr/bin/env python3
"""Collect per-iteration maxima of gradient norms around test images: the first step of CLEVER.

The command line lives in `cleverscore/cli/collect.py`; `python3 collect_gradients.py --help` lists its flags.
"""

from cleverscore.cli.collect import console_main

if __name__ == "__main__":
    console_main()
