"""Attacks that find adversarial examples: the upper side of every bracket around eps*.

certified radius <= eps* (the minimal adversarial distortion) <= the distortion of any example
an attack finds. The attacks here minimise that distortion, batched on the device:
- Linf: `pgd` (APGD steps, eps bisected, restarts) and `fab` (steps across the linearised
  boundary), besides the baseline `ifgsm`;
- L2: `ddn` (decoupled direction and norm) and `fab`, besides `carlini_wagner_l2` and `ifgsm`;
- L1: `pgd` with sparse steps and `fab`;
- `noise`: gradient-free random rays, the gradient-masking check.
Each takes a Criterion (`targeted(targets)` or `untargeted(labels)`, or an array of targets) and
returns an AttackResult whose examples were re-checked in float32 and measured from the examples
themselves (`result.verified`). `best_of` takes the smallest distortion per norm over attacks.
"""

from cleverscore.attacks.best import BEST, STRONGEST, Best, best_of, masking_counts, strongest
from cleverscore.attacks.criteria import Criterion, targeted, untargeted
from cleverscore.attacks.cw import CW_BINARY_STEPS, CW_ITERATIONS, carlini_wagner_l2
from cleverscore.attacks.ddn import DDN_GAMMA, DDN_STEPS, ddn
from cleverscore.attacks.fab import FAB_ITERATIONS, FAB_RESTARTS, fab
from cleverscore.attacks.ifgsm import IFGSM_GRID, IFGSM_STEPS, ifgsm
from cleverscore.attacks.noise import NOISE_DIRECTIONS, noise
from cleverscore.attacks.pgd import PGD_ITERATIONS, PGD_RESTARTS, PGD_ROUNDS, pgd
from cleverscore.attacks.registry import ATTACKS, Attack, AttackSettings, attack_named, run_attack
from cleverscore.attacks.result import AttackResult, predict, verified

__all__ = [
    "ATTACKS", "BEST", "CW_BINARY_STEPS", "CW_ITERATIONS", "DDN_GAMMA", "DDN_STEPS", "FAB_ITERATIONS",
    "FAB_RESTARTS", "IFGSM_GRID", "IFGSM_STEPS", "NOISE_DIRECTIONS", "PGD_ITERATIONS", "PGD_RESTARTS",
    "PGD_ROUNDS", "STRONGEST", "Attack", "AttackResult", "AttackSettings", "Best", "Criterion", "attack_named",
    "best_of", "carlini_wagner_l2", "ddn", "fab", "ifgsm", "masking_counts", "noise", "pgd", "predict",
    "run_attack", "strongest", "targeted", "untargeted", "verified",
]
