#!/usr/bin/env python3
"""Fit the maxima of a folder of .mat files and print CLEVER scores: the second step of CLEVER.

The command line lives in `cleverscore/cli/score.py`; `python3 clever.py --help` lists its flags.
"""

from cleverscore.cli.score import console_main

if __name__ == "__main__":
    console_main()
