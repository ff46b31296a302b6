"""Saving a finished work item: its printed lines and one `.mat` file per (image, target), atomically."""

from __future__ import annotations

import sys
import time

import numpy as np

from cleverscore.log_lines import (
    collection_done_line,
    collection_summary_lines,
    hessian_iteration_line,
    hessian_summary_line,
)
from cleverscore.mat_files import MODEL_ID_KEY, save_mat_atomically
from cleverscore.norms import GRAD_KEYS
from cleverscore.settings import CollectSettings

SEARCH_KEYS = tuple(k.replace("_max", "_search") for k in GRAD_KEYS)  # the estimator's column order


def ball_contents(ball) -> dict:
    """Keys (new to this version) describing the ball actually sampled; empty if unknown."""
    if ball is None:
        return {}
    return {"sample_norm": ball.sample_norm, "sample_radius": ball.radius, "input_dim": ball.input_dim}


def mat_contents(result, image_id: int, true_label: int, info: str, args_dict: dict, path: str) -> dict:
    """The keys of an order-1 `.mat` (the original's, then ours)."""
    return {
        "L2_max": result.slope_max[:, 0], "L1_max": result.slope_max[:, 1], "Li_max": result.slope_max[:, 2],
        "G2_max": result.grad_max[:, 0], "G1_max": result.grad_max[:, 1], "Gi_max": result.grad_max[:, 2],
        "g_x0": result.g_x0, "pred": result.pred, "id": image_id, "true_label": true_label,
        "target_label": result.target, "info": info, "args": args_dict, "path": path,
        "niters_used": result.niters_used, "stop_reason": result.stop_reason, **ball_contents(result.ball),
        **({} if result.search_max is None else dict(zip(SEARCH_KEYS, result.search_max))),
        **result.bounds,
    }


def hessian_contents(result, image_id: int, true_label: int, info: str, args_dict: dict, path: str) -> dict:
    """The keys of an order-2 `.mat`."""
    return {"H2_max": result.h2_max, "g_x0": result.g_x0, "g_x0_grad_2_norm": result.grad_norm_x0,
            "pred": result.pred, "id": image_id, "true_label": true_label, "target_label": result.target,
            "info": info, "args": args_dict, "path": path, **ball_contents(result.ball)}


def print_original_lines(settings: CollectSettings, estimator, result, item, counters: dict, target: int,
                         info: str) -> None:
    """The original's lines for one finished (image, target): per iteration, its maxima, and `total = ..`."""
    if settings.sampling.order == 2:
        for it, (h2, elapsed) in enumerate(zip(result.h2_max, np.cumsum(result.iter_times))):
            print(hessian_iteration_line(it, elapsed, result.iter_times[it], h2))
        print(hessian_summary_line(result.g_x0, result.grad_norm_x0, result.h2_max))
    else:
        estimator.log_iterations(result)
        for line in collection_summary_lines(result.g_x0, result.grad_max.max(0), result.slope_max.max(0),
                                             settings.sampling.compute_slope):
            print(line)
    print(collection_done_line(counters["total"], item.seq, item.image_id, time.time() - counters["start"],
                               item.true_label, target, info))


def save_outcome(settings: CollectSettings, estimator, outcome, counters: dict, model_id: str | None = None) -> None:
    """Print a finished item's lines and write its files atomically (always in the driver).

    `model_id` (models/identity.py) is recorded in every file, so that no later run or score
    mistakes them for another model's."""
    item = outcome.item
    identity = {MODEL_ID_KEY: model_id} if model_id else {}
    if outcome.error:
        print(f"[ERROR] {outcome.error}; skipping image {item.image_id}", file=sys.stderr)
        counters["failed"] += [(item.image_id, t) for t, _, _ in item.todo]
        return
    for result, (target, info, path) in zip(outcome.results, item.todo):
        if getattr(result, "error", None):
            print(f"[ERROR] {result.error}; no file written for it", file=sys.stderr)
            counters["failed"].append((item.image_id, target))
            continue
        counters["total"] += 1
        if settings.sampling.order == 2:
            contents = hessian_contents(result, item.image_id, item.true_label, info, settings.flags,
                                        str(path.with_suffix("")))
        else:
            contents = mat_contents(result, item.image_id, item.true_label, info, settings.flags,
                                    str(path.with_suffix("")))
        contents.update(identity)
        if settings.verbose:
            print_original_lines(settings, estimator, result, item, counters, target, info)
        save_mat_atomically(path, contents)
        counters["saved"] = counters.get("saved", 0) + 1
        if settings.verbose:
            print("saved to", path)
    sys.stdout.flush()
