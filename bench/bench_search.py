#!/usr/bin/env python3
"""Does a search find larger gradient norms than random sampling, and what does it say about the estimate?

    python3 bench/bench_search.py -m 2-layer --images 0,1,2 -N 1024 -i 100 --steps 50

For each image (top-2 target) it collects the usual maxima of ||grad g||_2 (the L2 score's
constant), fits the estimate and its 95% interval, then searches for larger norms inside the same
ball (the default L2 law's ball of radius 3, clipped to the input box), from the `--starts` best of
`-N` fresh random samples:
- ascent: projected gradient ascent on ||grad g||_2 (needs a twice-differentiable model; on a
  ReLU network grad g is piecewise constant and the ascent direction is 0),
- random: local random search, keeping a step of size `--step` (relative to the radius) when it
  raises the norm.
A norm found by search is a certain lower bound on the Lipschitz constant. The script prints, per
pair, the sampled maximum, the estimate and interval, and the largest searched norm: a searched
norm above the estimate means the estimate (and so the score's upper side) was too optimistic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RADIUS = 3.0  # the default l2 law's ball


def main() -> None:
    import tensorflow as tf

    from cleverscore.data import load_dataset
    from cleverscore.running.targets import choose_targets
    from cleverscore.sampling.estimator import EstimateLipschitz
    from cleverscore.scoring.fit import fit_reverse_weibull
    from cleverscore.scoring.intervals import end_point_interval

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", default="mnist")
    p.add_argument("-m", "--model_name", default="2-layer")
    p.add_argument("--images", default="0,1,2")
    p.add_argument("-N", "--Nsamps", type=int, default=1024)
    p.add_argument("-i", "--Niters", type=int, default=100)
    p.add_argument("--starts", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--step", type=float, default=0.02, help="search step, relative to the radius")
    p.add_argument("--out", default="")
    args = p.parse_args()

    data = load_dataset(args.dataset, None)
    est = EstimateLipschitz(seed=1215, log=None)
    model = est.load_model(args.dataset, args.model_name, batch_size=min(args.Nsamps, 1024))

    def norms_and_grads(x, c, j):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                logits = model(x, training=False)
                g = logits[:, c] - logits[:, j]
            grad = inner.gradient(g, x)
            norm = tf.sqrt(tf.reduce_sum(tf.reshape(grad * grad, (tf.shape(x)[0], -1)), 1))
        return norm, outer.gradient(norm, x)

    step_fn = tf.function(norms_and_grads, reduce_retracing=True)
    rng = np.random.default_rng(0)
    rows = []
    for image in (int(v) for v in args.images.split(",")):
        x0 = data.test_data[image]
        c = int(np.argmax(data.test_labels[image]))
        pred = est.predict(x0[None])[0]
        j = choose_targets(pred, 1, 1215, image, None)[0][0]
        res = est.estimate_targets(x0, c, [j], args.Nsamps, args.Niters)[0]
        g2 = res.grad_max[:, 0].astype(np.float64)
        fit, iv = fit_reverse_weibull(g2), end_point_interval(g2)
        starts = est.sample_points(x0, image, 10**6, 0, args.Nsamps)  # a fresh iteration index: new samples
        norm, _ = step_fn(tf.constant(starts), c, j)
        best = np.argsort(-norm.numpy())[: args.starts]
        found = {}
        for mode in ("ascent", "random"):
            x = tf.constant(starts[best])
            top = float(tf.reduce_max(norm).numpy())
            cur, grad = step_fn(x, c, j)
            for _ in range(args.steps):
                if mode == "ascent":
                    flat = tf.reshape(grad, (len(best), -1))
                    direction = flat / (tf.norm(flat, axis=1, keepdims=True) + 1e-12)
                    cand = x + tf.reshape(direction, x.shape) * args.step * RADIUS
                else:
                    noise = rng.normal(size=x.shape).astype(np.float32)
                    noise /= np.linalg.norm(noise.reshape(len(best), -1), axis=1).reshape(-1, 1, 1, 1)
                    cand = x + noise * args.step * RADIUS
                delta = cand - x0[None]
                dn = tf.norm(tf.reshape(delta, (len(best), -1)), axis=1)
                delta = delta * tf.reshape(tf.minimum(1.0, RADIUS / dn), (-1, 1, 1, 1))  # stay in the ball
                cand = tf.clip_by_value(x0[None] + delta, -0.5, 0.5)
                new, new_grad = step_fn(cand, c, j)
                better = new > cur
                x = tf.where(better[:, None, None, None], cand, x)
                grad = tf.where(better[:, None, None, None], new_grad, grad)
                cur = tf.where(better, new, cur)
                top = max(top, float(tf.reduce_max(cur).numpy()))
            found[mode] = top
        row = {"image": image, "target": j, "sampled_max": float(g2.max()), "estimate": fit.estimate,
               "lo": iv.lo, "hi": iv.hi, "searched_ascent": found["ascent"], "searched_random": found["random"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
