"""train_models.py: train the built-in MNIST/CIFAR models (normal, distilled at T=100, brelu, 2-layer).

With --adv_eps, the CNN is adversarially trained instead (PGD in an Linf ball, Madry et al. 2018),
saved as the zoo's `adv_EPS` model, and its PGD robust accuracy is measured at the end.

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
from cleverscore.models.adversarial import EVAL_RESTARTS, EVAL_STEPS, STEP_FACTOR, TRAIN_STEPS, PGDSettings
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
    parser.add_argument("--init_weights", default=None,
                        help="weights file of the same architecture to start from (fine-tuning), e.g. "
                             "cleverscore/builtin/models/mnist.weights.h5")
    add_adversarial_flags(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be positive")
    if args.lr is not None and args.lr <= 0:
        raise UsageError("--lr must be positive")
    if args.init_weights is not None and not Path(args.init_weights).is_file():
        raise UsageError(f"--init_weights: no file {args.init_weights}")
    adversary = adversary_from_flags(args)
    quiet_tensorflow(args.debug)
    import keras

    from cleverscore.data import load_dataset
    from cleverscore.models.zoo import adversarial_model_name, models_folder, parse_model_name

    keras.utils.set_random_seed(args.seed)
    model_name = adversarial_model_name(adversary.eps) if adversary else args.model
    spec = parse_model_name(args.dataset, model_name)
    output = Path(args.output) if args.output else models_folder() / spec.weights_file
    config = default_config(args.dataset, args.model, args.epochs)
    config.optimizer = args.optimizer
    if args.lr is not None:
        config.lr = args.lr
    config.adversary, config.warmup_epochs = adversary, args.adv_warmup
    config.init_weights = args.init_weights
    data = load_dataset(args.dataset, args.data_dir)
    start = time.time()
    acc = train_named_model(args.dataset, model_name, config, data, output, args.store_dtype)
    robust = ""
    if adversary and args.robust_images:
        from cleverscore.models.adversarial import robust_accuracy
        from cleverscore.models.training import stored_model

        n = min(args.robust_images, len(data.test_data))
        attack = adversary.with_steps(EVAL_STEPS)
        value = robust_accuracy(stored_model(spec, output), data.test_data[:n], data.test_labels[:n], attack)
        robust = (f", robust_accuracy = {value:.4f} (PGD eps {attack.eps:g}, {attack.steps} steps of {attack.step:g}, "
                  f"{EVAL_RESTARTS} random starts, first {n} test images)")
    print(f"[TRAIN] dataset = {args.dataset}, model = {model_name}, epochs = {config.epochs}, "
          f"test_accuracy = {acc:.4f}{robust}, time = {time.time() - start:.0f}s, saved = {output}")
    return 0


def add_adversarial_flags(parser: argparse.ArgumentParser) -> None:
    adv = parser.add_argument_group("adversarial training (PGD in an Linf ball, Madry et al. 2018)")
    adv.add_argument("--adv_eps", type=number(above=0, maximum=1), default=None,
                     help="train the CNN on PGD examples within this Linf radius, in input units ([-0.5, 0.5] "
                          "images: 0.3 is 30%% of the range); saves the zoo model adv_EPS")
    adv.add_argument("--adv_steps", type=positive_int, default=None, help=f"PGD steps per batch (default {TRAIN_STEPS})")
    adv.add_argument("--adv_step_size", type=number(above=0), default=None,
                     help=f"PGD step length (default {STEP_FACTOR} * eps / steps); each attack starts at a random "
                          "point of the ball")
    adv.add_argument("--adv_warmup", type=int, default=0,
                     help="epochs over which the radius grows linearly from 0 to --adv_eps (0 = none)")
    adv.add_argument("--robust_images", type=int, default=10000,
                     help=f"test images for the final robust accuracy (PGD at --adv_eps, {EVAL_STEPS} steps, "
                          f"{EVAL_RESTARTS} random starts); 0 skips it")


def positive_int(text: str) -> int:
    """An argparse `type`: an integer >= 1, or one clear error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def adversary_from_flags(args: argparse.Namespace) -> PGDSettings | None:
    """The PGD settings the flags ask for, or None for normal training; a UsageError for flags that do not fit."""
    if args.adv_eps is None:
        given = [f for f in ("adv_steps", "adv_step_size") if getattr(args, f) is not None]
        given += ["adv_warmup"] if args.adv_warmup else []
        if given:
            raise UsageError(f"--{given[0]} needs --adv_eps (the radius of adversarial training)")
        return None
    if args.model != "normal":
        raise UsageError(f"--adv_eps trains the 7-layer CNN (--model normal), not --model {args.model}")
    epochs = args.epochs or EPOCHS
    if not 0 <= args.adv_warmup < epochs:
        raise UsageError(f"--adv_warmup must be >= 0 and below --epochs ({epochs}), got {args.adv_warmup}")
    if args.robust_images < 0:
        raise UsageError(f"--robust_images must be >= 0, got {args.robust_images}")
    return PGDSettings(args.adv_eps, args.adv_steps or TRAIN_STEPS, args.adv_step_size)


def console_main() -> None:
    """The installed console command (pyproject.toml): flags from sys.argv, exit code on the way out."""
    run_cli(main)


if __name__ == "__main__":
    console_main()
