"""Where the project's shipped files live: the checkout that holds the package.

`models/` (the zoo's weights) and `data/` (the MNIST test files, ImageNet class names) sit
beside the package in a checkout or an editable install (`pip install -e .`). With a plain
`pip install .`, point `CLEVER_MODELS_DIR` and `--data_dir` (or `CLEVER_DATA_DIR`) at them.
"""

from __future__ import annotations

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = CHECKOUT / "models"
SHIPPED_DATA = CHECKOUT / "data"
