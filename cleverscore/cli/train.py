"""train_models.py: train the built-in MNIST/CIFAR models (normal, distilled at T=100, brelu, 2-layer).

Weights are written atomically as Keras `.weights.h5` files under `models/`, with the name
collect_gradients.py looks for; rerunning an interrupted command resumes it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cleverscore.cli.common import Parser, number, quiet_tensorflow, run_cli
from cleverscore.errors import UsageError
from cleverscore.locations import program_name
from cleverscore.models.training import CNN_LR, EPOCHS, TWO_LAYER_LR, default_config, train_named_model


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog=program_name("train_models.py", __name__), description=__doc__,
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-d", "--dataset", choices=["mnist", "cifar"], default="mnist")
    parser.add_argument("-m", "--model", choices=["normal", "distilled", "brelu", "2-layer"], default="normal")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS}")
    parser.add_argument("--lr", type=number(above=0), default=None,
                        help=f"initial learning rate (default {CNN_LR} for CNNs, {TWO_LAYER_LR} for 2-layer)")
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                        help="sgd: Nesterov momentum 0.9, as the original; adam: its steps do not shrink with the "
                             "1/T that distillation puts on the gradients")
    parser.add_argument("--data_dir", default=None, help="folder with the dataset files (else CLEVER_DATA_DIR, ./data)")
    parser.add_argument("--output", default=None, help="weights file (default: the zoo's path under models/)")
    parser.add_argument("--store_dtype", choices=["float32", "float16"], default="float32",
                        help="precision of the saved weights (float16 halves the file; the model computes in float32)")
    parser.add_argument("--seed", type=int, default=1215)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be positive")
    if args.lr is not None and args.lr <= 0:
        raise UsageError("--lr must be positive")
    quiet_tensorflow(args.debug)
    import keras

    from cleverscore.data import load_dataset
    from cleverscore.models.zoo import models_folder, parse_model_name

    keras.utils.set_random_seed(args.seed)
    spec = parse_model_name(args.dataset, args.model)
    output = Path(args.output) if args.output else models_folder() / spec.weights_file
    config = default_config(args.dataset, args.model, args.epochs)
    config.optimizer = args.optimizer
    if args.lr is not None:
        config.lr = args.lr
    data = load_dataset(args.dataset, args.data_dir)
    start = time.time()
    acc = train_named_model(args.dataset, args.model, config, data, output, args.store_dtype)
    print(f"[TRAIN] dataset = {args.dataset}, model = {args.model}, epochs = {config.epochs}, "
          f"test_accuracy = {acc:.4f}, time = {time.time() - start:.0f}s, saved = {output}")
    return 0


def console_main() -> None:
    """The installed console command (pyproject.toml): flags from sys.argv, exit code on the way out."""
    run_cli(main)


if __name__ == "__main__":
    console_main()
