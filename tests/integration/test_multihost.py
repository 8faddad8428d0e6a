"""The same config from one CPU to many devices and processes: equal losses on every mesh (sharding invariance), two
processes equal one, checkpoints restore across meshes and process counts (elastic), preemption agreed by all hosts.

Runs go through `vidgen train` in subprocesses with 8 fake CPU devices (4 per process in the two-process run).
"""

import json
import os
import re
import shutil
import signal

import jax
import numpy as np
import pytest
from conftest import tiny_train_config

import cli_runs
from vidgen.parallel import make_mesh
from vidgen.train.loop import restore_state
from vidgen.train.preemption import PREEMPTED_EXIT_CODE
from vidgen.train.vae_trainer import VAETrainer

FIELDS = {**cli_runs.STEADY_FIELDS, "batch_size": 8, "total_steps": 3, "checkpoint_every": 2}
# Float32 noise from per-device batch sizes (the CPU conv kernels and reduction order differ between 1 and 8 examples
# per device) reaches ~1.1e-5 relative on the first step's loss; a sharding mistake shows up orders of magnitude above.
RTOL = 3e-5


def _mesh_flags(data=1, fsdp=1, tensor=1):
  return [f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={tensor}"]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
  """The 1-device run and the 8-device data-parallel run every other run is compared with."""
  root = tmp_path_factory.mktemp("references")
  one = cli_runs.train(root / "one", *cli_runs.flags(FIELDS), devices=1)
  assert one.returncode == 0, one.stdout[-3000:]
  data8 = cli_runs.train(root / "data8", *cli_runs.flags(FIELDS), *_mesh_flags(data=8), devices=8)
  assert data8.returncode == 0, data8.stdout[-3000:]
  return {"one": root / "one", "data8": root / "data8"}


def _assert_same_losses(workdir, reference, steps=(1, 2, 3)):
  got, want = cli_runs.losses(workdir), cli_runs.losses(reference)
  for step in steps:
    np.testing.assert_allclose(got[step], want[step], rtol=RTOL, err_msg=f"step {step}")


@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=4), dict(data=2, fsdp=2, tensor=2), dict(fsdp=8)],
                         ids=lambda m: "-".join(f"{k}{v}" for k, v in m.items()))
def test_losses_do_not_depend_on_the_mesh(references, tmp_path, mesh):
  _assert_same_losses(references["data8"], references["one"])
  # Only the final checkpoint: saving from 8 fake devices costs seconds and adds nothing here.
  done = cli_runs.train(tmp_path, *cli_runs.flags({**FIELDS, "checkpoint_every": 100}), *_mesh_flags(**mesh), devices=8)
  assert done.returncode == 0, done.stdout[-3000:]
  _assert_same_losses(tmp_path, references["one"])
  final = cli_runs.records(tmp_path)[-1]
  np.testing.assert_allclose(final["eval_psnr"], cli_runs.records(references["one"])[-1]["eval_psnr"], rtol=RTOL)
  # Throughput fields on 8 devices: achieved FLOP/s are per device; no MFU on CPU (no known peak).
  for r in cli_runs.records(tmp_path):
    assert r["tflops_per_device"] == pytest.approx(r["model_flops_per_step"] / r["step_time_s"] / 8 / 1e12, rel=1e-9)
    assert "mfu" not in r


_ELASTIC_SCRIPT = r"""
import json, jax, numpy as np
from conftest import tiny_train_config
from vidgen.parallel import make_mesh
from vidgen.train import train_and_evaluate
from vidgen.train.loop import restore_state
from vidgen.train.vae_trainer import VAETrainer
config = tiny_train_config(**FIELDS, **{"mesh.data": 2, "mesh.fsdp": 4})
trainer = VAETrainer(config, make_mesh(dict(config.mesh)), WORKDIR)
state = restore_state(trainer, WORKDIR, 2)  # saved with mesh data=8; verified against its fingerprint
sharded = {}
for path, x in jax.tree_util.tree_flatten_with_path(state.params)[0]:
  spec = tuple(x.sharding.spec)
  if "fsdp" in spec:
    dim = spec.index("fsdp")
    sharded[jax.tree_util.keystr(path)] = [x.shape[dim], x.addressable_shards[0].data.shape[dim], len(x.devices())]
print("SHARDED " + json.dumps(sharded))
train_and_evaluate(config, WORKDIR)
"""


def test_checkpoints_restore_into_other_meshes_and_process_counts(references, tmp_path):
  # Saved on 8 devices with mesh data=8; continued from step 2 on the same 8 devices as data=2 x fsdp=4.
  workdir = tmp_path / "elastic"
  shutil.copytree(references["data8"], workdir)
  shutil.rmtree(workdir / "checkpoints" / "3")
  script = _ELASTIC_SCRIPT.replace("FIELDS", repr(FIELDS)).replace("WORKDIR", repr(str(workdir)))
  done = cli_runs.python(script, devices=8)
  assert done.returncode == 0, done.stdout[-3000:]
  sharded = json.loads(re.search(r"^SHARDED (.*)$", done.stdout, re.M)[1])
  # Kernels whose output channels divide by 4 are split 4 ways over fsdp (each shard on 2 data replicas).
  assert len(sharded) >= 5, sharded
  assert all(full == 4 * shard and devices == 8 for full, shard, devices in sharded.values()), sharded
  assert "resumed from" in done.stdout and "at step 2" in done.stdout
  _assert_same_losses(workdir, references["data8"])

  # The same checkpoint restored on this process's single device: bit for bit what was saved (the restore checks the
  # fingerprint taken at save time), and the same numbers as the 1-device run's own step-2 checkpoint.
  from_8 = _restore(references["data8"], 2)
  from_1 = _restore(references["one"], 2)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(from_8)[0], jax.tree.leaves(from_1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def _restore(workdir, step):
  config = tiny_train_config(**FIELDS)
  trainer = VAETrainer(config, make_mesh({"data": -1}), str(workdir))
  return restore_state(trainer, str(workdir), step)


def test_two_processes_train_like_one_and_stop_together_on_sigterm(references, tmp_path):
  """Two processes x 4 devices (localhost, gloo collectives) = one process x 8 devices, step for step. SIGTERM to
  one process only: JAX's preemption service makes both stop at the same step and save one checkpoint together."""
  port = cli_runs.free_port()
  args = [*cli_runs.flags({**FIELDS, "total_steps": 100000}), *_mesh_flags(data=8),
          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  runs = [cli_runs.Run(tmp_path, *args, f"--process_id={i}", devices=4) for i in range(2)]
  try:
    runs[0].wait_for(lambda line: line.startswith("step 3/"), timeout=240)
    runs[1].proc.send_signal(signal.SIGTERM)
    codes = [run.finish(timeout=120) for run in runs]
  finally:
    for run in runs:
      run.proc.kill()
  assert codes == [PREEMPTED_EXIT_CODE] * 2, [run.output()[-2000:] for run in runs]
  out = runs[0].output()
  assert "jax.distributed initialized: process 0 of 2" in out
  stop = int(re.search(r"preempted \(.*\): stopped after step (\d+) and saved checkpoint \1", out)[1])
  assert stop >= 3 and max(cli_runs.checkpoint_steps(tmp_path)) == stop
  # Only process 0 logs; both wrote their shards of the checkpoint.
  assert not re.search(r"^step \d", runs[1].output(), re.M)
  assert sorted(os.listdir(tmp_path / "checkpoints" / str(stop) / "state")).count("ocdbt.process_1") == 1
  _assert_same_losses(tmp_path, references["data8"])
  # Written by 2 processes, restored by 1 (verified bit for bit against the saved fingerprint).
  assert _restore(tmp_path, stop).step == stop
