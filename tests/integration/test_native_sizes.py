"""Native sizes end to end on the embedded data: a bucketed run (one program per bucket, exact resume), a packed run
whose loss is each clip's own, and sampling several sizes in one call."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import experiment_config
from vidgen.data.buckets import BucketSchedule
from vidgen.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class _Crash(Exception):
  pass


def read_losses(workdir):
  import json

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
  """A tiny trained VAE shared by the runs below (shapes_vae:runlocal, as shapes_t2v:runlocal trains it)."""
  from vidgen.train import train_and_evaluate

  config = experiment_config("shapes_t2v", "runlocal").vae_stage
  workdir = str(tmp_path_factory.mktemp("vae"))
  train_and_evaluate(config, workdir)
  return workdir


def _config(arg, vae_run, **overrides):
  common = {"vae_workdir": vae_run, "log_every": 1, "eval.at_end": False}
  return experiment_config("shapes_t2v", arg, **{**common, **overrides})


def test_bucketed_run_compiles_each_bucket_once_and_resumes_exactly(vae_run, tmp_path, monkeypatch, capfd):
  from vidgen.train import dit_trainer, train_and_evaluate

  steps = 8
  config = _config("runlocal,buckets", vae_run, total_steps=steps, checkpoint_every=4, sample_every=steps)
  full = str(tmp_path / "full")
  train_and_evaluate(config, full)
  out = capfd.readouterr().out
  for bucket in ("5x32x32", "5x16x48", "1x32x32"):
    assert os.path.exists(os.path.join(full, "latents", f"bucket_{bucket}", "meta.json"))
  compiled = re.findall(r"compiled a step program for mean \((\d+), (\d+), (\d+), (\d+), \d+\) \(phase bucket_(\d)\)",
                        out)
  schedule = BucketSchedule([b[3] for b in config.data.buckets], config.data.seed)
  drawn = {schedule(b)[0] for b in range(steps)}
  assert sorted(int(c[-1]) for c in compiled) == sorted(drawn) and len(drawn) >= 2  # each drawn bucket, once
  # Batches follow the token budget (80 latent tokens, at most batch_size clips): 2 of 32 tokens, 3 of 24, 5 of 16.
  expected = {0: (2, 2, 4, 4), 1: (3, 2, 2, 6), 2: (5, 1, 4, 4)}
  for *shape, k in compiled:
    assert tuple(int(v) for v in shape) == expected[int(k)]
  losses = read_losses(full)
  assert len(losses) == steps and np.all(np.isfinite(losses))

  parts = str(tmp_path / "parts")
  original, calls = dit_trainer.DiTTrainer.host_batch, {"n": 0}

  def crashing(self, batch):
    calls["n"] += 1
    if calls["n"] == 1 + 6:  # one peek at start-up, then one per step: crash fetching step 6's batch
      raise _Crash()
    return original(self, batch)

  monkeypatch.setattr(dit_trainer.DiTTrainer, "host_batch", crashing)
  with pytest.raises(_Crash):
    train_and_evaluate(config, parts)
  monkeypatch.setattr(dit_trainer.DiTTrainer, "host_batch", original)
  train_and_evaluate(config, parts)  # resumes from the checkpoint at step 4
  assert read_losses(parts) == losses

  # Sampling at several sizes in one call: each clip as in a call at its own size; sizes are checked.
  from vidgen.pipeline import VideoPipeline

  pipe = VideoPipeline.from_workdir(full)
  prompts = ["a red circle moving left", "a blue square moving up", "a green triangle moving down"]
  mixed = pipe(prompts, num_frames=[5, 5, 1], height=[32, 16, 32], width=[32, 48, 32], steps=2, seed=3,
               output="latent")
  assert [m.shape[:3] for m in mixed] == [(2, 4, 4), (2, 2, 6), (1, 4, 4)]
  alone = pipe(prompts, num_frames=5, height=16, width=48, steps=2, seed=3, output="latent")
  np.testing.assert_allclose(mixed[1], alone[1], rtol=1e-5, atol=1e-5)
  assert pipe("a red circle moving left", aspect_ratio=3.0, num_frames=1, steps=1).shape == (1, 16, 48, 3)
  assert pipe("a red circle moving left", width=64, aspect_ratio=2.0, num_frames=1, steps=1).shape == (1, 32, 64, 3)
  pipe.config.sampling.max_size = (9, 32, 48)
  with pytest.raises(InputError, match=r"width=56: must be a positive multiple of .* = 8, at most 48"):
    pipe("a red circle moving left", num_frames=5, width=56, steps=1)
  with pytest.raises(InputError, match=r"num_frames=13: .* at most 9"):
    pipe("a red circle moving left", num_frames=13, steps=1)
  with pytest.raises(InputError, match="height: got 2 values for 3 prompts"):
    pipe(prompts, height=[32, 32], steps=1)


def test_packed_loss_is_the_mean_of_each_clips_own_loss(vae_run, tmp_path):
  """A packed run trains, and its loss on a packed batch equals the objective on each clip alone (same time, noise
  and guidance dropout), averaged over the clips."""
  from vidgen import runs
  from vidgen.models.dit import drop_conditioning
  from vidgen.parallel import make_mesh
  from vidgen.train import stages, train_and_evaluate
  from vidgen.train.dit_trainer import DiTTrainer

  config = _config("runlocal,packing", vae_run, total_steps=3, checkpoint_every=3, sample_every=3)
  workdir = str(tmp_path / "packed")
  train_and_evaluate(config, workdir)
  assert np.all(np.isfinite(read_losses(workdir)))

  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  vae, vae_step = runs.load_vae(vae_run, mesh)
  trainer = DiTTrainer(config, mesh, workdir, vae=vae, cache=stages.latent_cache(config, workdir, vae, vae_step, mesh))
  params = jax.tree.map(lambda a: a + 0.05 * jnp.sin(jnp.arange(a.size, dtype=jnp.float32).reshape(a.shape)),
                        trainer.init_state(jax.random.key(0)).params)  # zero-initialised layers made non-zero
  iterator = trainer.make_iterator(0, 1)
  batch = {k: jnp.asarray(v) for k, v in trainer.host_batch(next(iterator)).items()}
  rows, slots = batch["mean"].shape[0], config.data.pack_slots
  rng = np.random.default_rng(0)
  batch.update(x=jnp.asarray(rng.standard_normal(batch["mean"].shape), jnp.float32),
               eps=jnp.asarray(rng.standard_normal(batch["mean"].shape), jnp.float32),
               t=jnp.asarray(rng.uniform(0.05, 0.95, (rows, slots)), jnp.float32),
               drop=jnp.asarray(rng.uniform(size=(rows, slots)) < 0.3))
  packed = float(trainer.packed_loss(params, batch, jax.random.key(1)))

  dit = nnx.merge(trainer.graphs["dit"], params["dit"])
  patch = trainer.spec.patch_size
  seg, grids = np.asarray(batch["segment_ids"]), np.asarray(batch["grids"])
  losses = []
  for r in range(rows):
    for s in range(slots):
      where = np.flatnonzero(seg[r] == s + 1)
      if not len(where):
        continue
      grid = tuple(grids[r, where[0]])

      def unpatch(a):
        t, h, w = grid
        return a[r, where].reshape(t, h, w, patch[0], patch[1], patch[2], -1).transpose(
            0, 3, 1, 4, 2, 5, 6).reshape(t * patch[0], h * patch[1], w * patch[2], -1)[None]

      one = {k: batch[k][r, s][None] for k in ("ids", "mask") if k in batch}
      cond = drop_conditioning(trainer.conditioning(params, one), batch["drop"][r, s][None], 0)
      losses.append(trainer.objective.loss(lambda z, t: dit(z, t, cond), unpatch(batch["x"]), jax.random.key(1),
                                           t=batch["t"][r, s][None], eps=unpatch(batch["eps"]))[0])
  assert len(losses) > rows  # rows hold several clips
  assert packed == pytest.approx(float(np.mean(losses)), rel=1e-5)
