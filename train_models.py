#!/usr/bin/env python3
"""Train the built-in MNIST/CIFAR models: normal, distilled (T=100), brelu and 2-layer, and
the CNN adversarially trained (PGD, Linf) at a radius, `adv_EPS` (--adv_eps).

The command line lives in `cleverscore/cli/train.py`; `python3 train_models.py --help` lists its flags.
"""

from cleverscore.cli.train import console_main

if __name__ == "__main__":
    console_main()
