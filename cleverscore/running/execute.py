"""Computing work items: in this process, one after another, or on Ray (running/cluster.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from cleverscore.log_lines import ProgressBar, RunProgress
from cleverscore.running.bounds import bound_keys
from cleverscore.running.plan import WorkItem
from cleverscore.running.search import searched_norms
from cleverscore.sampling.collector import MAX_TARGETS_PER_PASS, NonFiniteError
from cleverscore.settings import BoundSettings, CollectSettings, SamplingSettings


@dataclass
class ItemOutcome:
    """A work item's results, one TargetResult (order 1) or HessianResult (order 2) per target."""

    item: WorkItem
    results: list = field(default_factory=list)
    error: str | None = None  # NaN/Inf logits or gradients for the whole item: nothing to save


def compute_item(estimator, sampling: SamplingSettings, item: WorkItem, progress=None,
                 bounds: BoundSettings | None = None) -> ItemOutcome:
    """Collect one work item's maxima (and the bounds asked for): the same call in-process and on a Ray worker."""
    targets = [t for t, _, _ in item.todo]
    try:
        if sampling.order == 2:
            results = [estimator.hessian_maxima(item.x0, item.true_label, t, sampling, item.image_id, progress)
                       for t in targets]
        else:
            results = estimator.collect_maxima(item.x0, item.true_label, targets, sampling, item.image_id, progress)
            if sampling.search_steps:
                found = searched_norms(estimator, item.x0, item.true_label, targets, sampling, item.image_id)
                for result, row in zip(results, found):
                    result.search_max = np.maximum(row, result.grad_max.max(0))
            if bounds is not None and bounds.any:
                extra = bound_keys(estimator.model, item.x0, item.true_label, targets, sampling, bounds,
                                   estimator.input_range)
                for result, keys in zip(results, extra):
                    result.bounds = keys
    except NonFiniteError as err:
        return ItemOutcome(item, error=str(err))
    return ItemOutcome(item, results)


class LocalExecutor:
    """Runs work items one after another in this process: one progress bar for the run, or (verbose) one per item."""

    def __init__(self, settings: CollectSettings, estimator):
        self.settings, self.estimator = settings, estimator

    def run(self, items: Iterable[WorkItem]) -> Iterator[ItemOutcome]:
        if self.settings.verbose or self.settings.quiet:
            for item in items:
                label = f"image {item.image_id} ({len(item.todo)} target{'s' * (len(item.todo) > 1)})"
                progress = None if self.settings.quiet else (lambda n, s, label=label: ProgressBar(label, n, s))
                yield compute_item(self.estimator, self.settings.sampling, item, progress, self.settings.bounds)
            return
        items = list(items)  # the whole run's size, for one bar
        sampling = self.settings.sampling
        pairs = sum(len(item.todo) for item in items)
        passes = sum(-(-len(item.todo) // MAX_TARGETS_PER_PASS) for item in items)  # targets share a pass's samples
        bar = RunProgress(f"{pairs} (image, target) pair{'s' * (pairs != 1)}", passes * sampling.niters,
                          sampling.nsamps)
        for item in items:
            yield compute_item(self.estimator, sampling, item, bar.item, self.settings.bounds)
        if items:
            bar.finish()

    def close(self) -> None:
        pass
