"""Collect per-iteration maxima of gradient norms around test images (first step of CLEVER).

For every selected (image, target) this writes
`<save>/<dataset>_<model_name>/<Nsamps>_<Niters>_<id>_<true>_<target>_<info>_<activation>_order<k>.mat`
with the keys G1_max, G2_max, Gi_max, L1_max, L2_max, Li_max, g_x0, pred, id, true_label,
target_label, info, args and path, the ball actually sampled (sample_norm, sample_radius and
input_dim) and the model's identity (model_id). A `--model_path` model's folder is
`<data>_<model>_<first 8 digits of its model_id>`. `clever.py` turns a folder of them into CLEVER scores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cleverscore.cli.common import Parser, flag_names, flags_named, number, quiet_tensorflow, run_cli
from cleverscore.cli.flags import (
    add_user_model_flags,
    check_transform,
    check_user_model_flags,
    data_settings,
    described_flags,
    model_settings,
)
from cleverscore.errors import UsageError
from cleverscore.locations import program_name
from cleverscore.mat_files import check_writable_folder
from cleverscore.norms import by_flag
from cleverscore.running.targets import DEFAULT_TARGET_TYPE, USER
from cleverscore.sampling.transforms import TRANSFORMS
from cleverscore.settings import BoundSettings, CollectSettings, SamplingSettings

# --attacks alone: one strong attack per norm, about 8 s per (image, target) on the MNIST CNN (2 cores);
# `--attacks best` runs both of each norm's strongest (attacks.STRONGEST), about 16 s
DEFAULT_ATTACKS = "pgd_li,ddn_l2,fab_l1"

# Library parameters whose names differ from the flags that set them.
PARAMETER_FLAGS = {"nsamps": "-N/--Nsamps", "niters": "-i/--Niters"}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=program_name("collect_gradients.py", __name__), description=__doc__,
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-d", "--dataset", choices=["mnist", "cifar", "imagenet"], default="mnist")
    p.add_argument("-m", "--model_name", default="normal",
                   help="2-layer, normal, distilled, brelu, adv_EPS (the CNN adversarially trained at Linf radius EPS, "
                        "e.g. adv_0.1), or N,M,tag for an N-layer MLP with M hidden units")
    p.add_argument("--activation", default="relu",
                   choices=["relu", "tanh", "sigmoid", "elu", "softplus", "hard_sigmoid", "arctan"])
    p.add_argument("-N", "--Nsamps", type=int, default=1024, help="samples per iteration")
    p.add_argument("-i", "--Niters", type=int, default=500, help="iterations (maxima) per (image, target)")
    p.add_argument("-n", "--numimg", type=int, default=1, help="number of test images")
    p.add_argument("--ids", default="", help="tab-separated file with an 'id' column (and 'target' for bit 3)")
    p.add_argument("--target_type", type=int, default=DEFAULT_TARGET_TYPE,
                   help="bit mask: 1 top-2, 2 random, 4 least likely, 8 --ids targets, 16 all classes (untargeted)")
    p.add_argument("-f", "--firstimg", type=int, default=0, help="first test image (or first row of --ids)")
    p.add_argument("--transform", default="", help=f"input transformation: one of {', '.join(TRANSFORMS)}")
    p.add_argument("--order", type=int, choices=[1, 2], default=1)
    p.add_argument("--compute_slope", action="store_true", help="also collect slopes between pairs of samples")
    p.add_argument("--sample_norm", choices=["l2", "li", "l1"], default="l2", help="norm of the sampling ball")
    p.add_argument("-b", "--batch_size", type=int, default=0,
                   help="points per model call (0: 1024, or 32 for ImageNet; never more than Nsamps)")
    p.add_argument("--nthreads", type=int, default=0, help="sample worker processes for --sampler pool (0: half the cores)")
    p.add_argument("-s", "--save", default="./lipschitz_mat", help="results folder")
    p.add_argument("--seed", type=int, default=1215)
    p.add_argument("--radius", type=number(minimum=0), default=0.0,
                   help="sample uniformly in the ball of this radius (0: the original random radius factor)")
    p.add_argument("--rel_tol", type=number(minimum=0, below=1), default=0.0,
                   help="stop each (image, target) once its L2 score's 95%% interval has a relative half-width <= this "
                        "(checked after 50 iterations, then every 10; -i is the cap); 0: always -i iterations")
    p.add_argument("--search_steps", type=int, default=0,
                   help="after sampling, this many steps of gradient ascent on each gradient norm from the best "
                        "samples; the norms found cap the score from above (0: off)")
    p.add_argument("--certify", action="store_true",
                   help="also certify each (image, target): the radius within which no adversarial example exists "
                        "(L1, L2, Linf) and an upper bound of the Lipschitz constant over the sampled ball")
    p.add_argument("--certify_budget", type=number(minimum=0), default=0.0,
                   help="with --certify: seconds per image for tightening the certified Lipschitz bound by splitting "
                        "its derivative ranges (branch and bound; 0: one pass of bound propagation)")
    p.add_argument("--certify_optimize", type=number(minimum=0), default=0.0,
                   help="with --certify: seconds per image of optimised ReLU lower slopes (alpha-CROWN), shared by "
                        "the three CROWN radii (pushed further) and the forward bounds of the Lipschitz bound "
                        "(tightened); 0: CROWN's own slopes")
    p.add_argument("--exact", action="store_true",
                   help="also compute exact answers by MILP (small ReLU MLPs): the minimal Linf and L1 distortion "
                        "and, with --sample_norm li, the exact Lipschitz constant over the sampled ball")
    p.add_argument("--exact_time_limit", type=number(above=0), default=60.0,
                   help="seconds per MILP problem; past it the solver's proven bounds are recorded")
    p.add_argument("--attacks", nargs="?", const=DEFAULT_ATTACKS, default="", metavar="NAMES",
                   help="also run minimal-distortion attacks on each (image, target) through the sampled model "
                        "(--transform by BPDA) and record the smallest L1, L2 and Linf distortion found "
                        f"(attack_distortion_*); comma-separated names (best: the two strongest per norm), "
                        f"alone: {DEFAULT_ATTACKS}")
    p.add_argument("--sampler", choices=["graph", "pool"], default="graph",
                   help="graph: samples drawn inside the compiled step; pool: NumPy worker processes")
    p.add_argument("--devices", type=int, default=0,
                   help="split each batch across N devices (MirroredStrategy); 0: all visible GPUs")
    p.add_argument("--data_dir", default=None, help="dataset folder (else CLEVER_DATA_DIR, else ./data)")
    p.add_argument("--weights", default="imagenet",
                   help="ImageNet weights: imagenet (Keras cache or download), a file path, or random (testing)")
    p.add_argument("--labels", default="", help="ImageNet: a '<file name> <class index>' file (0-based), e.g. val.txt")
    add_user_model_flags(p)
    p.add_argument("--ray", default="", metavar="ADDRESS",
                   help="run on Ray: local (a Ray instance on this machine), auto or host:port (a running cluster)")
    p.add_argument("--ray_timeout", type=number(above=0), default=30.0,
                   help="with --ray HOST:PORT: seconds to wait for the cluster's head to answer")
    p.add_argument("--ray_workers", type=int, default=0,
                   help="with --ray: worker actors (0: one per GPU in the cluster, else one per machine)")
    p.add_argument("--overwrite", action="store_true", help="recompute (image, target) pairs whose file exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.add_argument("--verbose", action="store_true",
                   help="the original's full output: the flags, per image [DATAGEN], per iteration [STATS][L2] and "
                        "per (image, target) [STATS][L1] lines, a progress bar per image")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def validate(args: argparse.Namespace) -> None:
    """Reject bad flag values before anything heavy loads."""
    for flag, value in (("-N/--Nsamps", args.Nsamps), ("-i/--Niters", args.Niters), ("-n/--numimg", args.numimg)):
        if value < 1:
            raise UsageError(f"{flag} must be positive, got {value}")
    if args.batch_size < 0:
        raise UsageError(f"-b/--batch_size must be positive (or 0 for the default), got {args.batch_size}")
    if args.firstimg < 0:
        raise UsageError(f"-f/--firstimg must be >= 0, got {args.firstimg}")
    if args.devices < 0:
        raise UsageError(f"--devices must be >= 0, got {args.devices}")
    if args.nthreads < 0:
        raise UsageError(f"--nthreads must be >= 0, got {args.nthreads}")
    if args.ray_workers < 0:
        raise UsageError(f"--ray_workers must be >= 0, got {args.ray_workers}")
    if args.ray_workers and not args.ray:
        raise UsageError("--ray_workers needs --ray ADDRESS")
    if args.ray:
        from cleverscore.running.cluster import head_endpoint

        with flags_named({"ray": "--ray"}):
            head_endpoint(args.ray)  # a malformed address is refused before anything loads
    if args.certify_budget and not args.certify:
        raise UsageError("--certify_budget needs --certify")
    if args.certify_optimize and not args.certify:
        raise UsageError("--certify_optimize needs --certify")
    if (args.certify or args.exact) and args.order == 2:
        raise UsageError("--certify and --exact work with --order 1")
    if args.attacks and args.order == 2:
        raise UsageError("--attacks works with --order 1")
    collected_attacks(args.attacks)  # unknown names are refused before anything loads
    if args.rel_tol and args.order == 2:
        raise UsageError("--rel_tol works with --order 1 only")
    if args.search_steps < 0:
        raise UsageError(f"--search_steps must be >= 0, got {args.search_steps}")
    if args.search_steps and (args.order == 2 or args.sample_norm == "l1" or args.transform):
        raise UsageError("--search_steps works with --order 1, --sample_norm l2 or li, and no --transform")
    if not 0 < args.target_type < 32:
        raise UsageError(f"--target_type must be a bit mask between 1 and 31, got {args.target_type}")
    check_transform(args.transform)
    if args.target_type & USER and not args.ids and args.target_type == USER:
        raise UsageError("--target_type 8 needs an --ids file with a 'target' column")
    if args.dataset == "imagenet" and not args.model_path:
        from cleverscore.models.imagenet import registry_entry

        registry_entry(args.model_name)  # refuse unknown names before anything loads
    check_user_model_flags(args)
    if args.order == 2 and (args.compute_slope or args.transform or args.sampler == "pool"):
        raise UsageError("--order 2 cannot be combined with --compute_slope, --transform or --sampler pool")



def collected_attacks(text: str | None) -> tuple[str, ...]:
    """The attacks `--attacks NAMES` asks for, in order (`best` alone: the strongest per norm); () when not given."""
    if text is None or text == "":
        return ()
    from cleverscore.cli.attack import attack_names

    try:
        return tuple(attack_names(text)[0])
    except UsageError as err:
        raise UsageError(f"--attacks: {err}") from None


def settings_from_args(args: argparse.Namespace) -> CollectSettings:
    """The parsed flags as the settings object the library takes (once, here)."""
    sampling = SamplingSettings(
        nsamps=args.Nsamps, niters=args.Niters, sample_norm=by_flag(args.sample_norm), radius=args.radius or None,
        batch_size=args.batch_size or None, compute_slope=args.compute_slope, order=args.order,
        transform=args.transform or None, rel_tol=args.rel_tol or None, search_steps=args.search_steps,
        sampler=args.sampler, nthreads=args.nthreads, devices=args.devices, seed=args.seed)
    bounds = BoundSettings(certify=args.certify, exact=args.exact, exact_time_limit=args.exact_time_limit,
                           certify_budget=args.certify_budget, certify_optimize=args.certify_optimize,
                           attacks=collected_attacks(args.attacks))
    return CollectSettings(
        model=model_settings(args), data=data_settings(args), sampling=sampling, bounds=bounds, save=Path(args.save),
        overwrite=args.overwrite, quiet=args.quiet, verbose=args.verbose, ray=args.ray or None, ray_workers=args.ray_workers,
        ray_timeout=args.ray_timeout,
        flags={k: ("" if v is None else v) for k, v in described_flags(args).items()})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(args)
    settings = settings_from_args(args)
    from cleverscore.running.plan import output_folder

    with flags_named(flag_names(parser, **PARAMETER_FLAGS)):
        check_writable_folder(output_folder(settings))  # a user's model is hashed for its folder name
    if settings.ray:
        from cleverscore.running.cluster import prepare_driver, require_ray, wait_for_head

        require_ray(settings.ray)
        with flags_named({"ray_timeout": "--ray_timeout"}):
            wait_for_head(settings.ray, settings.ray_timeout)  # before TensorFlow loads: nothing there fails now
    quiet_tensorflow(args.debug)
    if settings.ray:
        prepare_driver(settings.ray)  # keep the driver off the GPUs (the workers use them)
    if args.verbose:
        print(described_flags(args))
    from cleverscore.running.collect import run_collection

    with flags_named(flag_names(parser, **PARAMETER_FLAGS)):
        return run_collection(settings)


def console_main() -> None:
    """The installed console command (pyproject.toml): flags from sys.argv, exit code on the way out."""
    run_cli(main)


if __name__ == "__main__":
    console_main()


