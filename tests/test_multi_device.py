"""Splitting each batch across devices (MirroredStrategy) gives the single device's maxima."""

from __future__ import annotations

import json

import pytest

from conftest import run_script

SCRIPT = r"""
import json, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from cleverscore.sampling.estimator import EstimateLipschitz
keras.utils.set_random_seed(4)
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(5)])
x0 = np.random.default_rng(0).uniform(-0.4, 0.4, (8, 8, 1)).astype(np.float32)
out = {}
for devices in (1, 2):
    est = EstimateLipschitz(log=None, seed=2)
    est.load_model(model=model, batch_size=62, devices=devices, compute_slope=True)
    res = est.estimate_targets(x0, 0, [1, 3], 150, 4, "l2")  # shards of 30, last batch 30 valid
    out[devices] = [[r.grad_max.tolist(), r.slope_max.tolist()] for r in res]
    out[f"replicas{devices}"] = 1 if est.strategy is None else est.strategy.num_replicas_in_sync
print(json.dumps(out))
"""


@pytest.mark.slow  # 10 s; CI time budget (8 minutes on 2 cores)
def test_two_logical_devices_give_single_device_results():
    import numpy as np

    res = run_script("-c", SCRIPT)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["replicas1"] == 1 and out["replicas2"] == 2
    np.testing.assert_allclose(np.array(out["2"]), np.array(out["1"]), rtol=1e-6)
