"""`vidgen eval --metrics` machinery: metric networks run on batches sharded over the devices (padded to whole
devices) and give what they give unsharded. Whole runs are evaluated in tests/integration/test_train_dit.py."""

import json
import os
import subprocess
import sys

import pytest

from vidgen.errors import InputError
from vidgen.evaluation import evaluate_metrics

SNIPPET = r"""
import json
import jax
import numpy as np
from vidgen.evaluation import _Features
from vidgen.metrics.i3d import i3d_features, load_i3d
from vidgen.metrics.image import psnr
from vidgen.parallel import make_mesh

rng = np.random.default_rng(0)
a = rng.integers(0, 256, (3, 9, 32, 32, 3), dtype=np.uint8)  # 3 clips on 4 devices: one padding clip
b = rng.integers(0, 256, (3, 9, 32, 32, 3), dtype=np.uint8)
features = _Features(("fvd", "psnr"), make_mesh({"data": -1}), None, "alex")
x, n = features._shard(a)
got = features.unpaired("fvd", a)
want = np.asarray(i3d_features(load_i3d(), a))
pairs = features.pairwise("psnr", a, b)
to_float = lambda v: v.astype(np.float32) / 127.5 - 1.0
print(json.dumps({"devices": len(jax.devices()), "shards": len(x.sharding.device_set), "n": n,
                  "shape": list(got.shape), "fvd_diff": float(np.abs(got - want).max()),
                  "psnr_diff": float(np.abs(pairs - np.asarray(psnr(to_float(a), to_float(b)))).max())}))
"""


def test_metric_networks_run_sharded_and_match_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
             TF_CPP_MIN_LOG_LEVEL="3")
  done = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, env=env, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4 and out["shards"] == 4 and out["n"] == 3 and out["shape"] == [3, 400]
  assert out["fvd_diff"] < 1e-3 and out["psnr_diff"] < 1e-4


def test_metrics_are_checked_before_anything_runs(tmp_path):
  for kwargs, message in [(dict(metrics=[]), "none given"), (dict(metrics=["fvd", "is"]), "choose from"),
                          (dict(metrics=["fid"], fid_weights=str(tmp_path / "absent.pth")), "does not exist"),
                          (dict(metrics=["ssim"], reference=str(tmp_path)), "does not pair")]:
    with pytest.raises(InputError, match=message):
      evaluate_metrics(str(tmp_path), **kwargs)
