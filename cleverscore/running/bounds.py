"""Proofs and exact answers beside a work item's sampled maxima (`--certify`, `--exact`).

For each (image, target) of an item this adds `.mat` keys:
- `--certify` (any supported Keras model): the certified upper bound of the local Lipschitz
  constant over the sampled ball in each dual norm (`G2_certified`, `G1_certified`,
  `Gi_certified`: the smaller of the Fast-Lip bound and the bound through the backward pass,
  `certify/jacobian.py`, with `lipschitz_parts` parts bounded by its split search, `lipschitz_certified_exact`
  1 when that search proved its bound in the sampling norm's dual attained in the ball), and two proofs
  of a robust radius per perturbation norm: CROWN's (`certified_radius_crown_L1`, `_L2`, `_Li`: the
  largest ball whose margin bound stays positive; with `--certify_optimize`, with optimised ReLU
  lower slopes, CROWN's own slopes' radius kept as `certified_radius_unoptimized_L1`, ...; that
  budget also optimises the slopes of the forward bounds the Lipschitz bound starts from) and the
  Lipschitz bound's
  (`certified_radius_lipschitz_L1`, ...: min(R_p, g(x0) / L), R_p the radius of the largest
  p-ball inside the sampled ball). `certified_radius_L1`, `_L2`, `_Li` is the larger of the two,
  `certified_radius_by_L1`, ... says which (`crown` or `lipschitz`). How each layer's bounds were
  obtained (`certify_layers`) and the time per target (`certify_seconds`) are recorded too;
- `--exact` (small ReLU MLPs): the exact minimal distortion in Linf and L1
  (`exact_distortion_Li`, `_L1`, NaN when the time limit left it open, with the proven
  `_bounds` [lower, upper] and the `_status`), and with an Linf sampling ball the exact local
  Lipschitz constant in the L1 gradient norm (`G1_exact`, `G1_exact_bounds`, `G1_exact_status`),
  the quantity CLEVER's Linf score estimates; the time (`exact_seconds`). The smallest distances
  of the adversarial examples the strongest Linf and L1 attacks found first
  (`attack_distortion_Li`, `_L1`) bound the minimal distortions from above and limit the region
  the MILP searches;
- `attacks` (any model, `--transform` included through BPDA): the smallest L1, L2 and Linf
  distortions of the checked adversarial examples the named minimal-distortion attacks found
  (`attack_distortion_L1`, `_L2`, `_Li`: each the best over every attack run, whichever norm the
  attack minimised; inf where none succeeded), the attack behind each (`attack_source_L1`, ...;
  '' where none), the attacks run (`attack_names`) and the time per target (`attack_seconds`).
  With `exact` too, its own Linf and L1 attack distortions count (source `exact`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from cleverscore.errors import UsageError
from cleverscore.models.user import unwrapped
from cleverscore.norms import L1, LINF, NORMS, supported_radius
from cleverscore.settings import BoundSettings, SamplingSettings


def certifiable_model(model):
    """(the Keras model under our wrappers, input_mean, input_std); a one-line refusal otherwise."""
    import keras

    if getattr(model, "__name__", "") == "log_probs":
        raise UsageError("`certify` and `exact` bound logit margins; a model scored through --output probs "
                         "(log-probabilities) cannot be certified")
    inner = unwrapped(model)
    if not isinstance(inner, keras.Model):
        raise UsageError(f"`certify` and `exact` need a Keras model; this one is a {type(inner).__name__} "
                         "(an ONNX or SavedModel file): convert it to Keras, or collect without them")
    return inner, getattr(model, "input_mean", None), getattr(model, "input_std", None)


CERTIFY_MEMORY_CAP = 8 * 2**30  # full CROWN passes on the CIFAR CNN need about 8 GiB; more gains little
CERTIFY_MEMORY_SHARE = 0.5  # of the memory available now: the sampler's model and batches keep the rest


def certify_memory_budget() -> int:
    """Bytes one bound-propagation pass may hold: half the available memory, at most 8 GiB.

    Below the budget a layer's bounds fall back from full CROWN to a truncated pass or to
    intervals (reported per layer); at 2 GiB the CIFAR CNN's radii were 8-60x smaller than at 8.
    """
    from cleverscore.certify import DEFAULT_MEMORY_BUDGET
    from cleverscore.sampling.memory import available_bytes

    free = available_bytes("CPU")
    if free is None:
        return DEFAULT_MEMORY_BUDGET
    return int(max(DEFAULT_MEMORY_BUDGET // 4, min(CERTIFY_MEMORY_CAP, CERTIFY_MEMORY_SHARE * free)))


def layer_report(layers) -> str:
    """How each layer's bounds were obtained, as one line: `name:method refined/wanted; ...`."""
    return "; ".join(f"{r.layer}:{r.method} {r.refined}/{r.wanted}" for r in layers)


def certified_keys(model, x0: np.ndarray, c: int, targets: Sequence[int], sampling: SamplingSettings,
                   box: tuple[float, float], split_seconds: float = 0.0, optimize_seconds: float = 0.0) -> list[dict]:
    """Per target, the `--certify` keys (see the module docstring); `split_seconds` as `certify_budget`,
    `optimize_seconds` as `certify_optimize`."""
    from cleverscore.certify import certified_radius, from_keras, lipschitz_upper_bounds

    inner, mean, std = certifiable_model(model)
    begin = time.perf_counter()
    graph = from_keras(inner, input_mean=mean, input_std=std)
    budget = certify_memory_budget()
    share = optimize_seconds / (len(NORMS) + 1)  # the three radius searches and the Lipschitz bound's forward bounds
    radii, wider = {}, None
    for norm in sorted(NORMS, key=lambda n: -n.p):  # Linf first: each norm's radii start the next one's search
        radii[norm] = certified_radius(graph, x0, c, targets, norm, box, memory_budget=budget,
                                       optimize_seconds=share, wider=wider)
        wider = (norm, radii[norm])
    ball = sampling.scale[1]
    lipschitz = lipschitz_upper_bounds(graph, x0, c, targets, ball, sampling.sample_norm, box,
                                       memory_budget=budget, split_seconds=split_seconds, optimize_seconds=share)
    logits = graph.forward(np.asarray(x0, np.float32)[None])[0].numpy().astype(np.float64)
    seconds = (time.perf_counter() - begin) / max(len(targets), 1)
    report = layer_report(lipschitz.layers)
    keys = []
    for k, j in enumerate(targets):
        row: dict = {}
        for norm in NORMS:
            supported = supported_radius(sampling.sample_norm, ball, int(np.size(x0)), norm)
            by_lipschitz = lipschitz_radius(logits[c] - logits[j], float(lipschitz.for_norm(norm)[k]), supported)
            by_crown = float(radii[norm].radii[k])
            row[f"certified_radius_crown_{norm.label}"] = by_crown
            if radii[norm].unoptimized is not None:
                row[f"certified_radius_unoptimized_{norm.label}"] = float(radii[norm].unoptimized[k])
            row[f"certified_radius_lipschitz_{norm.label}"] = by_lipschitz
            row[f"certified_radius_{norm.label}"] = max(by_crown, by_lipschitz)
            row[f"certified_radius_by_{norm.label}"] = "lipschitz" if by_lipschitz > by_crown else "crown"
            row[norm.certified_key] = float(lipschitz.for_norm(norm)[k])
        exact = lipschitz.attained is not None and bool(lipschitz.attained[k])
        row.update(certify_layers=report, certify_seconds=seconds, lipschitz_parts=lipschitz.parts,
                   lipschitz_certified_exact=int(exact))
        keys.append(row)
    return keys


def lipschitz_radius(margin: float, lipschitz: float, ball_radius: float) -> float:
    """min(R, g(x0) / L): within it the margin, which falls by at most L per unit of distance inside the
    ball where L holds, stays positive (0 when x0 is not classified above the target)."""
    if not margin > 0:
        return 0.0
    return float(min(ball_radius, margin / lipschitz)) if lipschitz > 0 else float(ball_radius)


def exact_keys(model, x0: np.ndarray, c: int, targets: Sequence[int], sampling: SamplingSettings,
               box: tuple[float, float], time_limit: float) -> list[dict]:
    """Per target, the `--exact` keys (see the module docstring)."""
    from cleverscore.certify.milp import local_lipschitz, minimal_distortion, relu_network_from_keras

    inner, mean, std = certifiable_model(model)
    if mean is not None or std is not None:
        raise UsageError("`exact` answers take a model without input_mean/input_std normalisation")
    net = relu_network_from_keras(inner)
    found = found_examples(inner, x0, targets, box)
    keys = []
    for k, j in enumerate(targets):
        begin = time.perf_counter()
        row: dict = {f"attack_distortion_{norm.label}": float(found[norm][k]) for norm in (LINF, L1)}
        for norm in (LINF, L1):
            # A found example's distance bounds the minimum and so the region the MILP searches
            # (an L1 distance bounds the Linf distance too); its big-M constants shrink with it.
            eps_max = float(found[norm][k]) * (1 + 1e-6) if math.isfinite(found[norm][k]) else None
            result = minimal_distortion(net, x0, c, int(j), norm, box, time_limit, eps_max=eps_max)
            key = f"exact_distortion_{norm.label}"
            # The attacks shorten their examples to the float32 boundary, which can lie a hair (1e-6
            # relative) inside the solver's tolerances: the closer of the two is the answer.
            exact = result.exact and result.value is not None
            row[key] = min(float(result.value), float(found[norm][k])) if exact else math.nan
            upper = min(result.upper_bound, float(found[norm][k]))  # the found example is a proof too
            row[f"{key}_bounds"] = np.array([result.lower_bound, upper], np.float64)
            row[f"{key}_status"] = result.status
        if sampling.sample_norm == LINF:
            lip = local_lipschitz(net, x0, c, int(j), sampling.scale[1], box, time_limit)
            row["G1_exact"] = float(lip.value) if lip.exact else math.nan
            row["G1_exact_bounds"] = np.array([lip.lower_bound, lip.upper_bound], np.float64)
            row["G1_exact_status"] = lip.status
        row["exact_seconds"] = time.perf_counter() - begin
        keys.append(row)
    return keys


def found_examples(model, x0: np.ndarray, targets: Sequence[int], box: tuple[float, float]) -> dict:
    """Per norm (LINF, L1), the smallest distortion of an adversarial example for each target (inf if none).

    The strongest Linf and L1 attacks (`attacks.STRONGEST`: PGD with bisection and FAB) run over all
    targets; every example is checked to be classified as its target, so the smallest Linf and L1
    distances over them are certain upper bounds of the minimal distortions.
    """
    from cleverscore.attacks import AttackSettings, strongest

    x = np.repeat(np.asarray(x0, np.float32)[None], len(targets), axis=0)
    best, _ = strongest(model, x, np.asarray(targets, np.int32), (LINF, L1), AttackSettings(box=tuple(box)))
    return {norm: np.asarray(best.distortion[norm], np.float64) for norm in (LINF, L1)}


def attack_keys(model, x0: np.ndarray, targets: Sequence[int], names: Sequence[str], box: tuple[float, float],
                transform: str | None = None) -> list[dict]:
    """Per target, the `attacks` keys (see the module docstring): the best checked distortion per norm."""
    from cleverscore.attacks import AttackSettings, best_of, run_attack
    from cleverscore.attacks.bpda import bpda_logits

    logits_fn = bpda_logits(model, transform, tuple(box)) if transform else model
    x = np.repeat(np.asarray(x0, np.float32)[None], len(targets), axis=0)
    begin = time.perf_counter()
    settings = AttackSettings(box=(float(box[0]), float(box[1])))
    results = {name: run_attack(name, logits_fn, x, np.asarray(targets, np.int32), settings) for name in names}
    best = best_of(results)
    seconds = (time.perf_counter() - begin) / max(len(targets), 1)
    keys = []
    for k in range(len(targets)):
        row: dict = {"attack_names": ",".join(names), "attack_seconds": seconds}
        for norm in NORMS:
            row[f"attack_distortion_{norm.label}"] = float(best.distortion[norm][k])
            row[f"attack_source_{norm.label}"] = str(best.source[norm][k])
        keys.append(row)
    return keys


def merged_attack_keys(row: dict, attacks: dict) -> dict:
    """`attacks`' keys, keeping the `exact` run's own attack distortion where it is smaller (source `exact`)."""
    merged = dict(attacks)
    for norm in NORMS:
        key = f"attack_distortion_{norm.label}"
        if key in row and float(row[key]) < float(attacks[key]):
            merged[key], merged[f"attack_source_{norm.label}"] = float(row[key]), "exact"
    return merged


def bound_keys(model, x0: np.ndarray, c: int, targets: Sequence[int], sampling: SamplingSettings,
               bounds: BoundSettings, box: tuple[float, float]) -> list[dict]:
    """Per target, every key the bound settings ask for (an empty dict each when none)."""
    keys = [{} for _ in targets]
    if bounds.certify:
        extras = certified_keys(model, x0, c, targets, sampling, box, bounds.certify_budget, bounds.certify_optimize)
        for row, extra in zip(keys, extras):
            row.update(extra)
    if bounds.exact:
        for row, extra in zip(keys, exact_keys(model, x0, c, targets, sampling, box, bounds.exact_time_limit)):
            row.update(extra)
    if bounds.attacks:
        found = attack_keys(model, x0, targets, bounds.attacks, box, sampling.transform)
        for row, extra in zip(keys, found):
            row.update(merged_attack_keys(row, extra))
    return keys
