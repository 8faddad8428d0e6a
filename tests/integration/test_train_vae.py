"""The VAE training run end to end: learning, checkpoints and exact resume, outputs, errors, the CLI."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_train_config

from vidgen import media
from vidgen.config import ConfigError
from vidgen.train import train_and_evaluate
from vidgen.train import vae_trainer
from vidgen.train.writers import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_short_run_learns_and_writes_its_outputs(tmp_path, monkeypatch, capsys):
  # Identity pixel normalization, so the untrained decoder starts at mid-gray rather than at the data's (black) mean
  # and 40 steps of a tiny model have something to measurably learn.
  config = tiny_train_config(total_steps=40, log_every=5, sample_every=40, checkpoint_every=40,
                             **{"loss.gan_start": 30, "vae.pixel_mean": (0.0, 0.0, 0.0),
                                "vae.pixel_std": (1.0, 1.0, 1.0)})
  train_and_evaluate(config, str(tmp_path))
  records = read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [1] + list(range(5, 41, 5))
  assert all("loss" in r and "steps_per_sec" in r for r in records)
  losses = [r["loss"] for r in records]
  assert np.mean(losses[-2:]) < 0.5 * losses[0], losses
  assert "gan_weight" in records[-1] and "gan_weight" not in records[-3]  # the GAN phase started at step 30
  assert records[-1]["eval_psnr"] > records[0]["psnr"] + 5
  # Reconstruction videos: input | reconstruction, eval_frames long, readable as mp4 and gif.
  for ext in (".mp4", ".gif"):
    frames = media.read_video(tmp_path / "samples" / f"recon_000040{ext}")
    assert frames.shape[:3] == (config.data.eval_frames, 2 * 32 + 2, 2 * 32 + 2)
  assert json.loads((tmp_path / "config.json").read_text())["trainer"] == "vae"
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
  # The benchmark script reads the workdir back and reports the same validation PSNR as the run's last evaluation.
  from vidgen.benchmarks import vae as vae_benchmark

  monkeypatch.setattr(sys, "argv", ["vae", f"--workdir={tmp_path}", f"--clips={config.data.eval_clips}"])
  vae_benchmark.main()
  printed = capsys.readouterr().out
  line = next(l for l in printed.splitlines() if "validation" in l)
  assert float(line.split("PSNR")[1].split("dB")[0]) == pytest.approx(records[-1]["eval_psnr"], abs=0.01)
  assert "frames/s" in printed and "steps/s" in printed and "read back:" in printed


def test_benchmark_shape_readings_count_per_true_shape():
  from vidgen.benchmarks.vae import shape_readings
  from vidgen.data.shapes import ShapesDataset

  batch = ShapesDataset(split="validation", num_frames=9, height=64, width=64).batch(0, 12)
  truth = shape_readings(batch["video"], batch["caption"])  # clean clips: every shape is read right
  shapes = [c.split()[2] for c in batch["caption"]]
  expected = "  ".join(f"{s} {shapes.count(s)}/{shapes.count(s)}" for s in sorted(set(shapes)))
  assert truth == expected + "  all three 100%", truth
  # Black frames have no shape to read: every clip counts as wrong.
  blank = shape_readings(np.zeros_like(batch["video"]), batch["caption"])
  assert blank == "  ".join(f"{s} 0/{shapes.count(s)}" for s in sorted(set(shapes))) + "  all three 0%"


class _Crash(Exception):
  pass


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
  config = tiny_train_config(total_steps=6, log_every=1, checkpoint_every=3, sample_every=100,
                             **{"loss.gan_start": 4})
  train_and_evaluate(config, str(tmp_path / "straight"))
  straight = read_metrics(str(tmp_path / "straight"))

  # Crash while fetching the batch for step 6 (after the checkpoint at step 3 and logging steps 4 and 5).
  calls = {"n": 0}
  original = vae_trainer.VAETrainer.host_batch

  def crashing(batch):
    calls["n"] += 1
    if calls["n"] == 1 + 6:  # one peek at start-up, then one per step
      raise _Crash()
    return original(batch)

  monkeypatch.setattr(vae_trainer.VAETrainer, "host_batch", staticmethod(crashing))
  with pytest.raises(_Crash):
    train_and_evaluate(config, str(tmp_path / "resumed"))
  assert [r["step"] for r in read_metrics(str(tmp_path / "resumed"))] == [1, 2, 3, 4, 5]
  monkeypatch.setattr(vae_trainer.VAETrainer, "host_batch", staticmethod(original))
  train_and_evaluate(config, str(tmp_path / "resumed"))
  resumed = read_metrics(str(tmp_path / "resumed"))

  assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
  for a, b in zip(straight, resumed):
    for key in ("loss", "rec_loss", "kl", "grad_norm"):
      assert a[key] == b[key], (a["step"], key, a[key], b[key])
  assert straight[-1]["eval_psnr"] == resumed[-1]["eval_psnr"]


def test_checkpoint_restores_params_and_latent_stats(tmp_path):
  import jax
  from vidgen.parallel import make_mesh
  from vidgen.checkpoint import Checkpointer, abstract_like

  config = tiny_train_config(total_steps=2, checkpoint_every=2)
  state = train_and_evaluate(config, str(tmp_path))
  trainer = vae_trainer.VAETrainer(config, make_mesh(dict(config.mesh)), str(tmp_path))
  shardings = trainer.state_shardings()
  abstract = abstract_like(jax.eval_shape(trainer.init_state, jax.random.key(0)), shardings)
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
  restored, data_state, step = checkpointer.restore(abstract)
  checkpointer.close()
  # Two steps with image_every=2: one batch of clips, one of images.
  assert step == 2 and data_state == {"next_batch": 2, "main": {"next_index": config.batch_size},
                                      "other": {"next_index": config.data.image_batch_size}}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)
  # The latent statistics were measured at the end of training (not the initial 0 / 1).
  stats = restored.stats
  assert not np.allclose(stats["latent_scale"], 1.0) and not np.allclose(stats["latent_shift"], 0.0)


@pytest.mark.parametrize("overrides,field", [
    ({"data.num_frames": 8}, "data.num_frames"),
    ({"data.height": 36}, "data.height"),
    ({"data.crop_size": 12}, "data.crop_size"),
    ({"data.crop_size": 40}, "data.crop_size"),
    ({"mesh.data": 4}, "mesh"),
    ({"batch_size": 0}, "batch_size"),
    ({"trainer": "gan"}, "trainer"),
    ({"loss.perceptual_weight": 1.0, "loss.perceptual": "lpips"}, "loss.perceptual"),
])
def test_bad_config_fails_before_compiling(tmp_path, overrides, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    train_and_evaluate(tiny_train_config(**overrides), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_image_batches_must_split_over_the_data_axes():
  config = tiny_train_config(**{"data.image_batch_size": 6})
  vae_trainer.validate_config(config, {"data": 2, "fsdp": 3, "tensor": 1})
  with pytest.raises(ConfigError, match=r"data\.image_batch_size: must be divisible by mesh data x fsdp = 4"):
    vae_trainer.validate_config(config, {"data": 4, "fsdp": 1, "tensor": 1})


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
  vae_trainer.register_perceptual_loss("nan_after_start", lambda x, y: jnp.full((x.shape[0],), jnp.nan))
  config = tiny_train_config(total_steps=4, checkpoint_every=2)
  train_and_evaluate(config, str(tmp_path))  # a good run: checkpoints 2 and 4
  bad = tiny_train_config(total_steps=8, checkpoint_every=2,
                          **{"loss.perceptual_weight": 1.0, "loss.perceptual": "nan_after_start"})
  with pytest.raises(FloatingPointError, match="at step 5"):
    train_and_evaluate(bad, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_perceptual_term_is_added_to_the_reconstruction_loss(tmp_path):
  vae_trainer.register_perceptual_loss("constant_half", lambda x, y: jnp.full((x.shape[0],), 0.5))
  base = tiny_train_config(total_steps=1)
  with_term = tiny_train_config(total_steps=1, **{"loss.perceptual_weight": 0.2, "loss.perceptual": "constant_half"})
  train_and_evaluate(base, str(tmp_path / "a"))
  train_and_evaluate(with_term, str(tmp_path / "b"))
  a, b = read_metrics(str(tmp_path / "a"))[0], read_metrics(str(tmp_path / "b"))[0]
  np.testing.assert_allclose(b["rec_loss"] - a["rec_loss"], 0.1, rtol=1e-4)


def test_cli_trains_with_overrides_and_rejects_typos(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  cmd = [sys.executable, "-c", "from vidgen.cli import run; run()", "train",
         f"--config={REPO}/experiments/shapes_vae.py:runlocal", f"--workdir={tmp_path}"]
  done = subprocess.run(cmd + ["--config.total_steps=2", "--config.sample_every=2"], env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "step 2/2" in done.stdout
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]
  typo = subprocess.run(cmd + ["--config.total_stepz=2"], env=env, capture_output=True, text=True, timeout=600)
  assert typo.returncode != 0 and "total_stepz" in typo.stderr
  usage = subprocess.run([sys.executable, "-c", "from vidgen.cli import run; run()", "fly"], env=env,
                         capture_output=True, text=True, timeout=600)
  assert usage.returncode != 0 and "expected one command" in usage.stderr
