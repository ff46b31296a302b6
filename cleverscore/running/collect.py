"""One collection run: load the inputs and the classifier, plan the work items, execute them, save.

`run_collection(settings)` is what collect_gradients.py does after parsing its flags; the Ray
workers call `loading.load_classifier` and `execute.compute_item` with the same settings.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from cleverscore.errors import CleverError, UsageError
from cleverscore.locations import command
from cleverscore.mat_files import is_write_failure, remove_stale_temp_files
from cleverscore.models.identity import model_id as identity
from cleverscore.models.user import check_image_shape, check_outputs
from cleverscore.running.execute import LocalExecutor
from cleverscore.running.loading import load_classifier, load_inputs
from cleverscore.running.plan import output_folder, plan_items, require_some_correct, select_images
from cleverscore.running.saving import save_outcome
from cleverscore.running.targets import ALL, LEAST, RANDOM, TOP2, USER
from cleverscore.sampling.shared_memory import remove_stale_segments
from cleverscore.settings import CollectSettings


def predict_inputs(estimator, test_x: np.ndarray, images: list) -> np.ndarray:
    """The model's logits on the selected images; a model that raises is reported in one line."""
    try:
        return estimator.predict(test_x[[i for i, _ in images]])
    except Exception as err:  # noqa: BLE001 - a user model can raise anything; report it in one line
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        raise CleverError(f"the model failed on the input images: {type(err).__name__}: {first}") from err


def check_labels(settings: CollectSettings, test_x, test_y, images: list, num_classes: int) -> None:
    """Labels and user targets fit the model's classes; a user target is not the true class."""
    bad = [i for i, _ in images if not 0 <= test_y[i] < num_classes]
    if bad:
        raise UsageError(f"labels of images {bad[:5]} are outside 0..{num_classes - 1}")
    if settings.data.ids and settings.data.target_type & USER:
        select_images(settings.data, len(test_x), num_classes)  # re-check the ids file's targets against the classes
    for image_id, user_target in images:
        if user_target is not None and user_target == test_y[image_id]:
            raise UsageError(f"`ids` target {user_target} of image {image_id} equals its true class")


def make_executor(settings: CollectSettings, estimator):
    """The in-process executor, or the Ray one for a Ray address (the same run/close interface)."""
    if not settings.ray:
        return LocalExecutor(settings, estimator)
    from cleverscore.running.cluster import RayExecutor

    return RayExecutor(settings)


def run_collection(settings: CollectSettings) -> int:
    """Collect and save the maxima of every pending (image, target); the exit code (1 if any failed)."""
    from cleverscore.sampling.estimator import EstimateLipschitz

    remove_stale_segments()
    test_x, test_y = load_inputs(settings)
    sampling = settings.sampling
    estimator = EstimateLipschitz(seed=sampling.seed, nthreads=sampling.nthreads, sampler=sampling.sampler,
                                  log=print if settings.verbose else None)
    load_classifier(settings, estimator, test_x.shape[1:])
    check_image_shape(estimator.model, test_x.shape[1:])
    images = select_images(settings.data, len(test_x), None)
    logits = predict_inputs(estimator, test_x, images)
    imagenet = settings.model.dataset == "imagenet"
    check_outputs(logits, None if settings.model.model_path else (1000 if imagenet else 10), settings.model.output)
    names = None
    if imagenet:
        from cleverscore.data.imagenet import class_names

        names = class_names()
    check_labels(settings, test_x, test_y, images, logits.shape[1])
    require_some_correct(logits, test_y[[i for i, _ in images]], settings.model)
    model_id = identity(settings.model, sampling.seed)
    folder = output_folder(settings, model_id)
    if settings.model.model_path:
        print(f"[INFO] results go to {folder} (model_id {model_id})", file=sys.stderr)
    for stale in remove_stale_temp_files(folder):
        print(f"[WARNING] removed {stale}, left by a run that was killed mid-write", file=sys.stderr)
    counters = {"total": 0, "saved": 0, "start": time.time(), "failed": []}
    if not settings.verbose:
        print(run_header(settings, len(images), folder), flush=True)
    try:
        executor = make_executor(settings, estimator)
        try:
            for outcome in executor.run(plan_items(settings, test_x, test_y, images, logits, names, folder, counters,
                                                model_id)):
                save_outcome(settings, estimator, outcome, counters, model_id)
        finally:
            executor.close()
    except OSError as err:
        if not is_write_failure(err):
            raise
        raise CleverError(f"cannot write to {folder} ({err.strerror}): {counters['saved']} (image, target) pair(s) "
                          "were saved and no partial file was left; make room and rerun to resume") from None
    finally:
        estimator.close()
    if counters["failed"]:
        pairs = ", ".join(f"({i}, {'all' if t is None else t})" for i, t in counters["failed"])
        print(f"[WARNING] {len(counters['failed'])} (image, target) pair(s) stopped on NaN/Inf logits or gradients: "
              f"{pairs}", file=sys.stderr)
    print(run_closing(counters, folder, time.time() - counters["start"]))
    return 1 if counters["failed"] else 0


TARGET_NAMES = ((TOP2, "top-2"), (RANDOM, "random"), (LEAST, "least likely"), (USER, "--ids targets"),
                (ALL, "every other class"))


def run_header(settings: CollectSettings, num_images: int, folder) -> str:
    """One line saying what the run computes and where the files go (the flags in full come with --verbose)."""
    s, m = settings.sampling, settings.model
    model = str(m.model_path) if m.model_path else f"{m.dataset} {m.model_name}" + (
        f" ({m.activation})" if m.activation != "relu" else "")
    mask = settings.data.target_type if settings.data.ids else settings.data.target_type & ~USER  # bit 8 needs --ids
    targets = ", ".join(name for bit, name in TARGET_NAMES if mask & bit)
    radius = f"radius {s.radius:g}" if s.radius else "the original's random radius"
    what = "Hessian norms (order 2)" if s.order == 2 else "gradient norms"
    ball = s.sample_norm.label.replace("Li", "Linf")
    return (f"CLEVER: {model}, {num_images} image(s) from {settings.data.firstimg}, targets {targets}; maxima of "
            f"{what} over {s.niters} iterations x {s.nsamps} samples in an {ball} ball ({radius}) "
            f"-> {folder}")


def run_closing(counters: dict, folder, elapsed: float) -> str:
    """The last line: what was written, what was skipped, and the command that scores it."""
    notes = []
    if counters.get("existing"):
        notes.append(f"{len(counters['existing'])} already there")
    if counters.get("misclassified"):
        shown = ", ".join(map(str, counters["misclassified"][:10]))
        more = ", ..." if len(counters["misclassified"]) > 10 else ""
        notes.append(f"{len(counters['misclassified'])} misclassified image(s) skipped: {shown}{more}")
    if counters["failed"]:
        notes.append(f"{len(counters['failed'])} failed")
    extra = f" ({'; '.join(notes)})" if notes else ""
    return (f"saved {counters['saved']} (image, target) file(s) in {elapsed:.0f} s{extra}; score them with: "
            f"{command('clever.py')} {folder}")
