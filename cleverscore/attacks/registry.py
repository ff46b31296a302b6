"""Every attack by name, the norm it minimises, and the one settings object that budgets them all."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cleverscore.attacks.criteria import Criterion, as_criterion
from cleverscore.attacks.cw import CW_BINARY_STEPS, CW_ITERATIONS, carlini_wagner_l2
from cleverscore.attacks.ddn import DDN_GAMMA, DDN_STEPS, ddn
from cleverscore.attacks.fab import FAB_ITERATIONS, FAB_RESTARTS, fab
from cleverscore.attacks.ifgsm import IFGSM_STEPS, ifgsm
from cleverscore.attacks.noise import NOISE_DIRECTIONS, noise
from cleverscore.attacks.pgd import PGD_ITERATIONS, PGD_RESTARTS, PGD_ROUNDS, pgd
from cleverscore.attacks.result import AttackResult
from cleverscore.errors import UsageError
from cleverscore.norms import L1, L2, LINF, LpNorm


@dataclass(frozen=True)
class AttackSettings:
    """The budget of every attack (attacks.py's flags), the input box and the seed of random starts."""

    cw_binary_steps: int = CW_BINARY_STEPS
    cw_iterations: int = CW_ITERATIONS
    ifgsm_steps: int = IFGSM_STEPS
    pgd_iterations: int = PGD_ITERATIONS
    pgd_restarts: int = PGD_RESTARTS
    pgd_rounds: int = PGD_ROUNDS
    fab_iterations: int = FAB_ITERATIONS
    fab_restarts: int = FAB_RESTARTS
    ddn_steps: int = DDN_STEPS
    ddn_gamma: float = DDN_GAMMA
    noise_directions: int = NOISE_DIRECTIONS
    box: tuple[float, float] = (-0.5, 0.5)
    seed: int = 0


Runner = Callable[[Callable, np.ndarray, Criterion, AttackSettings], AttackResult]


@dataclass(frozen=True)
class Attack:
    """A named attack: the norm whose distortion it minimises, whether it follows gradients, how to run it."""

    name: str
    norm: LpNorm
    uses_gradients: bool
    run: Runner
    about: str


def _pgd(norm: LpNorm) -> Runner:
    return lambda f, x, c, s: pgd(f, x, c, norm, iterations=s.pgd_iterations, restarts=s.pgd_restarts,
                                  rounds=s.pgd_rounds, box=s.box, seed=s.seed)


def _fab(norm: LpNorm) -> Runner:
    return lambda f, x, c, s: fab(f, x, c, norm, iterations=s.fab_iterations, restarts=s.fab_restarts, box=s.box,
                                  seed=s.seed)


def _noise(norm: LpNorm) -> Runner:
    return lambda f, x, c, s: noise(f, x, c, norm, directions=s.noise_directions, box=s.box, seed=s.seed)


def _ifgsm(flag: str) -> Runner:
    return lambda f, x, c, s: ifgsm(f, x, c, flag, steps=s.ifgsm_steps, box=s.box)


_ALL = (
    Attack("cw_l2", L2, True, lambda f, x, c, s: carlini_wagner_l2(
        f, x, c, binary_steps=s.cw_binary_steps, iterations=s.cw_iterations, box=s.box), "Carlini-Wagner L2"),
    Attack("ifgsm_l2", L2, True, _ifgsm("l2"), "I-FGSM, L2, a fixed eps grid"),
    Attack("ifgsm_li", LINF, True, _ifgsm("li"), "I-FGSM, Linf, a fixed eps grid"),
    Attack("pgd_li", LINF, True, _pgd(LINF), "APGD steps, eps bisected, restarts"),
    Attack("pgd_l2", L2, True, _pgd(L2), "APGD steps, eps bisected, restarts"),
    Attack("pgd_l1", L1, True, _pgd(L1), "sparse APGD steps, eps bisected, restarts"),
    Attack("fab_li", LINF, True, _fab(LINF), "FAB, steps across the linearised boundary"),
    Attack("fab_l2", L2, True, _fab(L2), "FAB"),
    Attack("fab_l1", L1, True, _fab(L1), "FAB"),
    Attack("ddn_l2", L2, True, lambda f, x, c, s: ddn(f, x, c, steps=s.ddn_steps, gamma=s.ddn_gamma, box=s.box),
           "decoupled direction and norm"),
    Attack("noise_li", LINF, False, _noise(LINF), "gradient-free: random rays (a masking check)"),
    Attack("noise_l2", L2, False, _noise(L2), "gradient-free: random rays"),
    Attack("noise_l1", L1, False, _noise(L1), "gradient-free: random rays"),
)
ATTACKS: dict[str, Attack] = {a.name: a for a in _ALL}


def attack_named(name: str) -> Attack:
    try:
        return ATTACKS[name]
    except KeyError:
        raise UsageError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}") from None


def run_attack(name: str, logits_fn: Callable, x: np.ndarray, criterion,
               settings: AttackSettings | None = None) -> AttackResult:
    """One attack by name; `criterion` a Criterion or an array of target classes (targeted)."""
    return attack_named(name).run(logits_fn, np.asarray(x, np.float32), as_criterion(criterion),
                                  settings or AttackSettings())
