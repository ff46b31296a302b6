"""`best`: per norm, the smallest checked distortion over the attacks run; and the gradient-masking check.

Every attack's examples are checked (result.verified) and measured in all three norms, so the
smallest distortion in a norm may come from an attack that minimised another one: each is a real
adversarial example, hence an upper bound on the minimal distortion in every norm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from cleverscore.attacks.criteria import as_criterion
from cleverscore.attacks.registry import ATTACKS, AttackSettings, run_attack
from cleverscore.attacks.result import AttackResult
from cleverscore.norms import L1, L2, LINF, LpNorm

BEST = "best"
# The strongest attacks per norm: what `best` runs when asked for alone, and what --exact runs.
STRONGEST: dict[LpNorm, tuple[str, ...]] = {LINF: ("pgd_li", "fab_li"), L2: ("ddn_l2", "fab_l2"),
                                            L1: ("pgd_l1", "fab_l1")}
NORMS = (L1, L2, LINF)


@dataclass
class Best:
    """Per norm, the smallest distortion over some attacks' examples and the attack that found it.

    Attributes:
        distortion: norm -> (B,) float64, inf where no attack succeeded.
        source: norm -> (B,) names of the attacks behind `distortion` ('' where none succeeded).
    """

    distortion: dict[LpNorm, np.ndarray]
    source: dict[LpNorm, np.ndarray]

    @property
    def success(self) -> np.ndarray:
        return np.isfinite(self.distortion[LINF])


def best_of(results: Mapping[str, AttackResult]) -> Best:
    """The per-norm minimum over `results` (attack name -> its checked result on the same examples)."""
    names = list(results)
    distortion, source = {}, {}
    for norm in NORMS:
        table = np.stack([results[name].distortion(norm) for name in names])
        pick = np.argmin(table, axis=0)
        distortion[norm] = table[pick, np.arange(table.shape[1])]
        source[norm] = np.where(np.isfinite(distortion[norm]), np.array(names, dtype=object)[pick], "")
    return Best(distortion, source)


def strongest(logits_fn: Callable, x: np.ndarray, criterion, norms: Iterable[LpNorm],
              settings: AttackSettings | None = None) -> tuple[Best, dict[str, AttackResult]]:
    """Run the STRONGEST attacks of `norms` on a batch: their best, and each attack's own result."""
    criterion = as_criterion(criterion)
    names = [name for norm in norms for name in STRONGEST[norm]]
    results = {name: run_attack(name, logits_fn, x, criterion, settings) for name in names}
    return best_of(results), results


def masking_counts(results: Mapping[str, AttackResult]) -> dict[LpNorm, tuple[int, int]]:
    """Per norm of a gradient-free attack run: (pairs where it beat every gradient attack, pairs).

    A gradient-free search that finds a closer example than the gradient attacks is the sign of
    gradients that mislead (gradient masking): on an honest model it should be 0 of n.
    """
    gradient = [r for name, r in results.items() if ATTACKS[name].uses_gradients]
    counts = {}
    for norm in NORMS:
        free = [r for name, r in results.items() if not ATTACKS[name].uses_gradients and ATTACKS[name].norm == norm]
        if not free:
            continue
        free_best = np.min([r.distortion(norm) for r in free], axis=0)
        grad_best = np.min([r.distortion(norm) for r in gradient], axis=0) if gradient else np.full_like(free_best,
                                                                                                         np.inf)
        counts[norm] = (int(np.sum(free_best < grad_best)), len(free_best))
    return counts
