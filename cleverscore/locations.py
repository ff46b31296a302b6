"""Where the project's files live, in a checkout and in an installed copy.

`builtin/` travels inside the package (in the wheel too): the default model's weights (the
MNIST 7-layer CNN), the MNIST test files and the ImageNet class names, so that an installed
copy scores the built-in default offline from any folder. The rest of the zoo's weights sit in
the checkout's `models/` folder; an installed copy reads (and training writes) `./models`, or
the folder `CLEVER_MODELS_DIR` names.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
BUILTIN = PACKAGE / "builtin"
BUILTIN_MODELS = BUILTIN / "models"
SHIPPED_DATA = BUILTIN / "data"
CHECKOUT = PACKAGE.parent
# An installed package sits in site-packages, whose parent holds no project files.
IN_CHECKOUT = (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "collect_gradients.py").is_file()
MODELS = CHECKOUT / "models" if IN_CHECKOUT else Path("models")

# The card's scripts and the console commands `pip install` puts on the PATH for them.
CONSOLE_COMMANDS = {
    "collect_gradients.py": "clever-collect",
    "clever.py": "clever-score",
    "attacks.py": "clever-attack",
    "train_models.py": "clever-train",
    "train_nlayer.py": "clever-train-nlayer",
}
CONSOLE_NAMES = {*CONSOLE_COMMANDS.values(), "clever-tables"}


def command(script: str) -> str:
    """How a user runs one of the card's scripts here: `python3 train_models.py` in a checkout, else `clever-train`."""
    if IN_CHECKOUT or script not in CONSOLE_COMMANDS:
        return f"python3 {script}"
    return CONSOLE_COMMANDS[script]


def program_name(script: str | None, module: str) -> str:
    """The name a command's help and errors show: the console command or script that was run.

    `python3 -m cleverscore.cli.collect` shows as such; anything else (a test runner calling
    `main`) shows the card's script name.
    """
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if invoked == script or invoked in CONSOLE_NAMES:
        return invoked
    if script is None or invoked in (module.rsplit(".", 1)[-1] + ".py", "__main__.py"):
        return f"python3 -m {module}"
    return script
