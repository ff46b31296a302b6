"""Train N-layer MLPs and 7-layer CNNs with a chosen activation.

    python3 train_nlayer.py --model mnist --modeltype mlp --activation tanh 1024 1024
    python3 train_nlayer.py --model mnist --modeltype cnn --activation sigmoid

Hidden sizes are positional for MLPs (N-1 equal sizes M give the `-m N,M,tag` model).
Weights go to `<modelpath>/<modelfile>`, by default the name `collect_gradients.py` looks for:
`<dataset>_<N>layer_<activation>_<M>_<tag>.weights.h5` for MLPs and
`<dataset>_cnn_<activation>.weights.h5` for CNNs. The training routine is cleverscore.models.training.train.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cleverscore.cli.common import Parser, number, quiet_tensorflow, run_cli
from cleverscore.errors import UsageError
from cleverscore.locations import program_name
from cleverscore.models.training import TrainConfig, accuracy, train_and_save
from cleverscore.models.zoo import ACTIVATIONS, models_folder, parse_model_name


def default_file(dataset: str, modeltype: str, activation: str, hidden: list[int], tag: str) -> str:
    if modeltype == "cnn":
        return parse_model_name(dataset, "normal", activation).weights_file
    if len(set(hidden)) != 1:
        return f"{dataset}_{len(hidden) + 1}layer_{activation}_{'x'.join(map(str, hidden))}_{tag}.weights.h5"
    return parse_model_name(dataset, f"{len(hidden) + 1},{hidden[0]},{tag}", activation).weights_file


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog=program_name("train_nlayer.py", __name__), description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["mnist", "cifar"], default="mnist", help="dataset")
    p.add_argument("--modeltype", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    p.add_argument("hidden", nargs="*", type=int, help="MLP hidden layer sizes")
    p.add_argument("--lr", type=number(above=0), default=0.01)
    p.add_argument("--wd", type=number(minimum=0), default=0.0, help="weight decay")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--tag", default="trained", help="the tag of an N,M,tag model name")
    p.add_argument("--modelpath", default=None, help="folder for the weights (default models/)")
    p.add_argument("--modelfile", default=None, help="file name (default: the name the loader expects)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing weights file")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--train_subset", type=int, default=0, help="train on the first K images only (0: all)")
    p.add_argument("--seed", type=int, default=1215)
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if args.modeltype == "mlp" and not args.hidden:
        raise UsageError("an MLP needs hidden layer sizes, e.g. 1024 1024")
    if args.modeltype == "cnn" and args.hidden:
        raise UsageError("hidden sizes are for --modeltype mlp only")
    if any(h < 1 for h in args.hidden) or args.epochs < 1 or args.lr <= 0:
        raise UsageError("hidden sizes, --epochs and --lr must be positive")
    name = args.modelfile or default_file(args.model, args.modeltype, args.activation, args.hidden, args.tag)
    if not name.endswith(".weights.h5"):
        raise UsageError("--modelfile must end in .weights.h5")
    output = Path(args.modelpath) / name if args.modelpath else models_folder() / name
    if output.exists() and not args.overwrite:
        raise UsageError(f"{output} exists; pass --overwrite to replace it")
    quiet_tensorflow(args.debug)
    import keras

    from cleverscore.data import load_dataset
    from cleverscore.models.zoo import build_cnn, build_mlp

    keras.utils.set_random_seed(args.seed)
    data = load_dataset(args.model, args.data_dir)
    model = build_cnn(args.model, args.activation) if args.modeltype == "cnn" else \
        build_mlp(args.model, tuple(args.hidden), args.activation)
    x, y = data.train_data, data.train_labels
    if args.train_subset:
        x, y = x[: args.train_subset], y[: args.train_subset]
    config = TrainConfig(epochs=args.epochs, lr=args.lr, optimizer=args.optimizer, weight_decay=args.wd,
                         batch_size=args.batch_size)
    start = time.time()
    train_and_save(model, x, y, config, (data.validation_data, data.validation_labels), output)
    acc = accuracy(model, data.test_data, data.test_labels)
    print(f"[TRAIN] dataset = {args.model}, model = {args.modeltype}-{args.activation}, epochs = {args.epochs}, "
          f"test_accuracy = {acc:.4f}, time = {time.time() - start:.0f}s, saved = {output}")
    return 0


def console_main() -> None:
    """The installed console command (pyproject.toml): flags from sys.argv, exit code on the way out."""
    run_cli(main)


if __name__ == "__main__":
    console_main()
