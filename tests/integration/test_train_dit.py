"""The DiT run end to end on tiny settings: stages, latent cache, resume, pipeline, CLI sample/eval, bad input."""

import json
import os
import threading
import subprocess
import sys

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import experiment_config
from vidgen.config import ConfigError, load_config_file
from vidgen.errors import InputError, RunNotFoundError
from vidgen.data import to_model_range
from vidgen.data.shapes import ShapesDataset, caption, parse_combination
from vidgen.data.latent_cache import CacheMismatchError, LatentCache, LatentIterator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def t2v_config(arg="runlocal", **overrides):
  return experiment_config("shapes_t2v", arg, **overrides)


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def t2v_run(tmp_path_factory):
  """One tiny text-to-video run through all three stages (shared by the tests below)."""
  from vidgen.train import train_and_evaluate

  workdir = str(tmp_path_factory.mktemp("t2v"))
  train_and_evaluate(t2v_config(), workdir)
  return workdir


def test_stages_write_everything(t2v_run):
  for path in ("vae/config.json", "latents/meta.json", "config.json", "eval.json", "samples/samples_000004.mp4",
               "samples/samples_000004.gif", "samples/samples_000004.txt"):
    assert os.path.exists(os.path.join(t2v_run, path)), path
  rows = read_metrics(t2v_run)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) for r in rows)
  with open(os.path.join(t2v_run, "eval.json")) as f:
    results = json.load(f)
  # runlocal evaluates 2 seen and the 7 held-out combinations, one clip each; every number is what its examples say.
  config = t2v_config()
  assert sorted({e["prompt"] for e in results["held_out"]["examples"]}) == sorted(
      caption(*parse_combination(c)) for c in config.data.held_out)
  ids = []
  for split, n in (("seen", 2), ("held_out", 7)):
    r = results[split]
    assert r["combinations"] == r["count"] == len(r["examples"]) == n
    for k in ("color", "shape", "direction", "all"):
      assert r["correct"][k] == sum(e["correct"][k] for e in r["examples"])
      assert r[k] == r["correct"][k] / n
      low, high = r["interval"][k]
      assert low <= r[k] <= high and low < high
    assert r["abstained"]["any"] == sum("none" in e["predicted"].values() for e in r["examples"])
    ids += [(e["seed"], e["index"]) for e in r["examples"]]
  assert len(set(ids)) == len(ids)  # every clip drawn from noise of its own
  last = rows[-1]
  assert last["eval_seen_all_low"] <= last["eval_seen_all"] <= last["eval_seen_all_high"]
  # The reported VAE PSNR is the measurement: recomputed here from the run's VAE on the same validation clips.
  from vidgen import metrics, runs

  vae, _ = runs.load_vae(os.path.join(t2v_run, "vae"))
  validation = ShapesDataset.from_config(config.data, "validation")
  clips = to_model_range(validation.batch(0, config.eval.reconstruction_clips)["video"])
  recon = np.clip(np.asarray(vae.decode(vae.encode(clips).mode())), -1, 1)
  np.testing.assert_allclose(results["vae_psnr"], np.mean(metrics.psnr(recon, clips)), rtol=1e-4)


def test_rerun_skips_finished_stages_and_steps(t2v_run):
  from vidgen.train import train_and_evaluate

  vae_mtime = os.path.getmtime(os.path.join(t2v_run, "vae", "metrics.jsonl"))
  cache_mtime = os.path.getmtime(os.path.join(t2v_run, "latents", "meta.json"))
  train_and_evaluate(t2v_config(), t2v_run)
  assert os.path.getmtime(os.path.join(t2v_run, "vae", "metrics.jsonl")) == vae_mtime
  assert os.path.getmtime(os.path.join(t2v_run, "latents", "meta.json")) == cache_mtime
  assert [r["step"] for r in read_metrics(t2v_run)] == [1, 2, 3, 4]


def _fixed_loss(trainer, params, batch) -> float:
  """The run's loss (v or flow) of `params` at fixed noise levels and noise on a fixed batch (training losses are too
  noisy)."""
  from vidgen.models.dit import Conditioning

  x = (batch["mean"] - trainer.latent_shift) / trainer.latent_scale
  dit = nnx.merge(trainer.graphs["dit"], params["dit"])
  text = nnx.merge(trainer.graphs["text"], params["text"])(batch["ids"], batch["mask"])
  cond = Conditioning(text=text, text_mask=batch["mask"])
  losses = [trainer.objective.loss(lambda z, t: dit(z, t, cond), x, jax.random.key(i), t=jnp.full((x.shape[0],), t))
            for i, t in enumerate((0.2, 0.4, 0.6, 0.8))]
  return float(jnp.mean(jnp.stack(losses)))


class _Crash(Exception):
  pass


def test_dit_learns_and_resume_is_exact(t2v_run, tmp_path, monkeypatch):
  """Reusing the run's VAE and cache: 40 steps lower a fixed-noise v-loss; a run that crashes at step 30 and is
  restarted logs exactly the losses of one never stopped."""
  from vidgen import runs
  from vidgen.parallel import make_mesh
  from vidgen.train import dit_trainer, stages, train_and_evaluate
  from vidgen.train.dit_trainer import DiTTrainer
  from vidgen.train.loop import restore_state

  common = dict(vae_workdir=os.path.join(t2v_run, "vae"), total_steps=40, log_every=1, checkpoint_every=20,
                sample_every=40, **{"data.cache_dir": os.path.join(t2v_run, "latents"), "eval.at_end": False,
                                    "optimizer.warmup_steps": 5, "optimizer.lr": 3e-3})
  full = str(tmp_path / "full")
  train_and_evaluate(t2v_config(**common), full)
  losses = [r["loss"] for r in read_metrics(full)]

  config = t2v_config(**common)
  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  vae, vae_step = runs.load_vae(config.vae_workdir, mesh)
  trainer = DiTTrainer(config, mesh, full, vae=vae, cache=stages.latent_cache(config, full, vae, vae_step, mesh))
  initial = trainer.init_state(jax.random.key(config.seed))
  trained = restore_state(trainer, full, config.total_steps)
  # Inference reads the same weights without the trainer or the optimizer state.
  run = runs.load_dit(full, mesh)
  assert run.step == config.total_steps and sorted(run.networks) == ["dit", "text"]
  for name, (_, params) in run.networks.items():
    jax.tree.map(np.testing.assert_array_equal, params, trained.ema_params[name])
  it = trainer.make_iterator(0, 1)
  it.image_every = 0
  batch = next(it)
  before, after = _fixed_loss(trainer, initial.params, batch), _fixed_loss(trainer, trained.params, batch)
  assert after < 0.9 * before, (before, after)  # deterministic: same noise, same t, same clips

  parts = str(tmp_path / "parts")
  original, calls = DiTTrainer.host_batch, {"n": 0}

  def crashing(self, batch):
    calls["n"] += 1
    if calls["n"] == 1 + 30:  # one peek at start-up, then one per step: crash fetching step 30's batch
      raise _Crash()
    return original(self, batch)

  monkeypatch.setattr(dit_trainer.DiTTrainer, "host_batch", crashing)
  with pytest.raises(_Crash):
    train_and_evaluate(t2v_config(**common), parts)
  assert len(read_metrics(parts)) == 29
  monkeypatch.setattr(dit_trainer.DiTTrainer, "host_batch", original)
  train_and_evaluate(t2v_config(**common), parts)  # resumes from the checkpoint at step 20
  assert [r["loss"] for r in read_metrics(parts)] == losses


def test_pipeline_is_deterministic_and_checks_input(t2v_run):
  from vidgen.pipeline import VideoPipeline

  pipe = VideoPipeline.from_workdir(t2v_run)
  a = pipe("a red circle moving left", num_frames=5, steps=3, seed=1)
  b = pipe("a red circle moving left", num_frames=5, steps=3, seed=1)
  c = pipe("a red circle moving left", num_frames=5, steps=3, seed=2)
  assert a.dtype == np.uint8 and a.shape == (5, 32, 32, 3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  batch = pipe(["a red circle moving left", "a blue square moving up"], num_frames=1, steps=2)
  assert batch.shape == (2, 1, 32, 32, 3)
  with pytest.raises(ValueError, match="num_frames=6"):
    pipe("a red circle moving left", num_frames=6)
  with pytest.raises(ValueError, match="height=36"):
    pipe("a red circle moving left", height=36)
  with pytest.raises(ValueError, match="'purple'"):
    pipe("a purple circle moving left")
  with pytest.raises(ValueError, match="empty"):
    pipe("   ")
  with pytest.raises(ValueError, match=r"guidance_interval=\(0\.8, 0\.2\)"):
    pipe("a red circle moving left", guidance_interval=(0.8, 0.2))
  with pytest.raises(ValueError, match="more than|longer|max"):
    pipe("a red circle moving left and a blue square moving up")
  with pytest.raises(RunNotFoundError, match="'vae' run"):
    VideoPipeline.from_workdir(os.path.join(t2v_run, "vae"))

  # Video-to-video, checked on latents (a 4-step VAE decodes every latent to nearly the same frame). Strength 1
  # starts from (almost) pure noise and ignores the clip; a tiny strength returns the clip's own latents.
  clip = ShapesDataset.from_config(pipe.config.data, "validation")[0]
  prompt, init = clip.caption, clip.video
  vae = nnx.merge(pipe.vae_graph, pipe.vae_params, pipe.vae_stats)
  own = np.asarray(vae.encode(to_model_range(init[None])).mode())[0]
  fresh = pipe(prompt, num_frames=5, steps=3, seed=1, output="latent")
  assert fresh.shape == own.shape
  # The cosine schedule keeps alpha(1) = 5.5e-4 of the clip at t = 1: the start differs from pure noise by that much.
  np.testing.assert_allclose(pipe(prompt, init_video=init, steps=3, seed=1, output="latent"), fresh, atol=5e-3)
  kept = pipe(prompt, init_video=init, strength=0.01, steps=1, seed=1, output="latent")
  # At t = 0.01 the cosine schedule keeps alpha = 0.9998 of the clip; the denoiser's x-estimate differs from it by
  # sigma-weighted terms only (sigma = 0.016), so the latents stay within a few percent of the clip's own.
  error = lambda z: float(np.sqrt(np.mean((z - own) ** 2)) / np.sqrt(np.mean(own ** 2)))
  assert error(kept) < 0.05 < 0.5 < error(fresh), (error(kept), error(fresh))
  with pytest.raises(ValueError, match="output='frames'"):
    pipe(prompt, output="frames")
  with pytest.raises(ValueError, match="strength=0.5 needs init_video"):
    pipe(prompt, strength=0.5)
  with pytest.raises(ValueError, match="init_video: expected uint8"):
    pipe(prompt, init_video=a.astype(np.float32))


def test_renoise_benchmark_prints_a_row_per_strength(t2v_run, monkeypatch, capsys):
  from vidgen.benchmarks import renoise
  from vidgen.config import read_run_config

  clips = renoise.balanced_clips(read_run_config(t2v_run), 6)
  assert [c.shape for c in clips] == ["circle", "circle", "square", "square", "triangle", "triangle"]
  monkeypatch.setattr(sys, "argv", ["renoise", "--workdir", t2v_run, "--clips", "3", "--strengths", "0.3,1",
                                    "--steps", "2", "--guidance_interval", "0.5,1"])
  renoise.main()
  rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.3 |") or
          line.startswith("| 1 |")]
  assert len(rows) == 2 and all(row.count("/1") == 3 for row in rows), rows


def test_cli_sample_and_eval(t2v_run, tmp_path):
  out = str(tmp_path / "clip.mp4")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-m", "vidgen.cli", "sample", "--workdir", t2v_run, "--prompt",
                         "a green square moving up", "--output", out, "--num_frames", "5", "--steps", "3"],
                        capture_output=True, text=True, env=env, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "sampling: step 3/3" in done.stderr
  frames = np.stack(list(iio.imiter(out)))
  assert frames.shape[0] == 5 and frames.shape[1:3] == (32, 32)

  os.remove(os.path.join(t2v_run, "eval.json"))
  done = subprocess.run([sys.executable, "-m", "vidgen.cli", "eval", "--workdir", t2v_run], capture_output=True,
                        text=True, env=env, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "held-out" in done.stdout and os.path.exists(os.path.join(t2v_run, "eval.json"))

  # A user's mistake: one line on stderr naming it, exit code 2, no traceback.
  mistakes = [(["--workdir", str(tmp_path / "none"), "--prompt", "a red circle moving up"], "no config.json"),
              (["--workdir", t2v_run, "--prompt", "a purple circle moving up"], "'purple'"),
              (["--workdir", t2v_run, "--prompt", "a red circle moving up", "--num_frames", "6"], "num_frames=6"),
              (["--workdir", os.path.join(t2v_run, "vae"), "--prompt", "a red circle moving up"], "'vae' run")]
  for args, message in mistakes:
    done = subprocess.run([sys.executable, "-m", "vidgen.cli", "sample", *args, "--output", out], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    errors = [line for line in done.stderr.splitlines() if line.startswith("vidgen sample: error:")]
    assert done.returncode == 2 and len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_class_conditional_config_runs(t2v_run, tmp_path):
  from vidgen.train import train_and_evaluate

  config = load_config_file(os.path.join(ROOT, "experiments", "shapes_dit_class.py"), "runlocal")
  config.vae_workdir = os.path.join(t2v_run, "vae")
  config.eval.at_end = False
  workdir = str(tmp_path / "class")
  train_and_evaluate(config, workdir)
  from vidgen.pipeline import VideoPipeline

  pipe = VideoPipeline.from_workdir(workdir)
  assert pipe("a red square moving down", num_frames=5, steps=2).shape == (5, 32, 32, 3)
  with pytest.raises(ValueError, match="class-conditional"):
    pipe("a red square")


def test_self_conditioned_dit_trains_and_samples(t2v_run, tmp_path):
  """dit.self_condition: the trainer's two-pass loss and the pipeline's estimate-carrying sampler, end to end; a
  self-conditioning probability outside [0, 1] is refused by name."""
  from vidgen.pipeline import VideoPipeline
  from vidgen.train import train_and_evaluate

  common = dict(vae_workdir=os.path.join(t2v_run, "vae"), total_steps=3, log_every=1, checkpoint_every=3,
                sample_every=3, **{"data.cache_dir": os.path.join(t2v_run, "latents"), "eval.at_end": False,
                                   "dit.self_condition": True})
  workdir = str(tmp_path / "selfcond")
  train_and_evaluate(t2v_config(**common), workdir)
  losses = [r["loss"] for r in read_metrics(workdir)]
  assert len(losses) == 3 and np.all(np.isfinite(losses))
  pipe = VideoPipeline.from_workdir(workdir)
  prompt = "a red square moving down"
  first = pipe(prompt, num_frames=5, steps=3, seed=2)
  assert first.shape == (5, 32, 32, 3)
  np.testing.assert_array_equal(first, pipe(prompt, num_frames=5, steps=3, seed=2))

  # The pipeline feeds each step the previous x-estimate: its latents equal a self-conditioned DDIM loop over the
  # same weights and noise, and differ from the loop that always passes zeros.
  from vidgen import diffusion
  from vidgen.models.dit import Conditioning

  dit, text = (nnx.merge(*pipe.networks[name]) for name in ("dit", "text"))
  ids, mask = pipe.tokenizer([prompt])
  cond = Conditioning(text=text(ids, mask), text_mask=mask)
  noise = jax.random.normal(jax.random.fold_in(jax.random.key(2), 0), (2, 4, 4, dit.spec.in_channels))[None]
  vae = nnx.merge(pipe.vae_graph, pipe.vae_params, pipe.vae_stats)
  with_estimate = diffusion.sample(lambda z, t, x_prev: dit(z, t, cond.replace(self_cond=x_prev)), noise,
                                   schedule=pipe.schedule, num_steps=3, self_condition=True)
  with_zeros = diffusion.sample(lambda z, t: dit(z, t, cond), noise, schedule=pipe.schedule, num_steps=3)
  latents = pipe(prompt, num_frames=5, steps=3, seed=2, guidance=1.0, output="latent")
  np.testing.assert_allclose(latents, np.asarray(vae.denormalize(with_estimate))[0], rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(with_estimate - with_zeros)).max() > 1e-3
  with pytest.raises(ConfigError, match=r"diffusion\.self_condition_prob"):
    train_and_evaluate(t2v_config(**dict(common, **{"diffusion.self_condition_prob": 1.5})), str(tmp_path / "bad"))


def test_flow_objective_trains_and_samples(t2v_run, tmp_path):
  """shapes_t2v.py:runlocal,flow (rectified flow, logit-normal times, Euler) on the run's VAE and cache: a fixed-noise
  flow loss falls, the pipeline samples with the run's objective, and a v run's config.json without the objective
  fields still loads as v."""
  from vidgen import diffusion, runs
  from vidgen.parallel import make_mesh
  from vidgen.pipeline import VideoPipeline
  from vidgen.train import stages, train_and_evaluate
  from vidgen.train.dit_trainer import DiTTrainer
  from vidgen.train.loop import restore_state

  common = dict(vae_workdir=os.path.join(t2v_run, "vae"), total_steps=30, log_every=1, checkpoint_every=30,
                sample_every=30, **{"data.cache_dir": os.path.join(t2v_run, "latents"), "eval.at_end": False,
                                    "optimizer.warmup_steps": 5, "optimizer.lr": 3e-3, "data.image_every": 0})
  config = t2v_config("runlocal,flow", **common)
  workdir = str(tmp_path / "flow")
  train_and_evaluate(config, workdir)
  losses = [r["loss"] for r in read_metrics(workdir)]
  assert len(losses) == 30 and np.all(np.isfinite(losses))

  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  vae, vae_step = runs.load_vae(config.vae_workdir, mesh)
  trainer = DiTTrainer(config, mesh, workdir, vae=vae, cache=stages.latent_cache(config, workdir, vae, vae_step, mesh))
  assert trainer.objective.prediction == "flow" and trainer.objective.timesteps == "logit_normal"
  it = trainer.make_iterator(0, 1)
  it.image_every = 0
  batch = next(it)
  initial = trainer.init_state(jax.random.key(config.seed))
  trained = restore_state(trainer, workdir, config.total_steps)
  before, after = _fixed_loss(trainer, initial.params, batch), _fixed_loss(trainer, trained.params, batch)
  assert after < 0.9 * before, (before, after)  # deterministic: same noise, same t, same clips

  # The sample written at step 30 went through VideoPipeline with the run's objective and sampler.
  assert np.stack(list(iio.imiter(os.path.join(workdir, "samples", "samples_000030.gif")))).shape[0] == 5
  pipe = VideoPipeline.from_workdir(workdir)
  assert pipe.objective == trainer.objective and pipe.sampling_defaults()["sampler"] == "euler"

  run = runs.load_dit(t2v_run)
  with run.config.diffusion.unlocked():
    for name in ("objective", "timesteps"):
      del run.config.diffusion[name]
  assert VideoPipeline(run.config, run.networks, run.vae).objective == diffusion.Objective(diffusion.CosineSchedule())


def test_config_errors_name_the_field(t2v_run, tmp_path):
  from vidgen.train import train_and_evaluate

  vae = os.path.join(t2v_run, "vae")
  cases = [({"dit.input_size": (2, 2, 2)}, "dit.input_size"),
           ({"data.num_frames": 6}, "data.num_frames"),
           ({"dit.text_dim": 8}, "dit.text_dim"),
           ({"diffusion.schedule": "sigmoid"}, "diffusion.schedule"),
           ({"data.cache_clips": 2}, "data.cache_clips"),
           ({"sampling.guidance_interval": (0.5, 1.5)}, "sampling.guidance_interval"),
           # Fields that would be silently ignored are refused.
           ({"diffusion.zero_terminal_snr": True}, "diffusion.zero_terminal_snr"),
           ({"data.name": "kinetics"}, "data.name"),
           # A stage is validated with the run, before anything trains.
           ({"vae_workdir": "", "vae_stage.vae.latent_channels": 0}, "vae_stage.vae.latent_channels")]
  for overrides, field in cases:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
      train_and_evaluate(t2v_config(**{"vae_workdir": vae, **overrides}), str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad")
  with pytest.raises(ConfigError, match="vae_workdir"):
    train_and_evaluate(t2v_config(vae_workdir=str(tmp_path / "missing")), str(tmp_path / "bad2"))


# -- latent cache ----------------------------------------------------------------------------------------------------


def _fake_clips(start, n):
  return {"video": np.full((n, 5, 8, 8, 3), start, np.uint8), "label": np.arange(start, start + n),
          "caption": np.asarray([f"clip {i}" for i in range(start, start + n)], dtype=object)}


def _fake_encode(video):
  mean = video[:, :2, :2, :2, :1].astype(np.float32)
  return mean, np.ones_like(mean)


class _Stream:
  """Shard `index` of `count` of the fake clip stream, batches of n, with a JSON state (as a data source gives)."""

  def __init__(self, n, index=0, count=1):
    self.n, self.index, self.count, self.next = n, index, count, 0

  def __next__(self):
    batch = _fake_clips((self.next * self.count + self.index) * self.n, self.n)
    self.next += 1
    return batch

  def get_state(self):
    return {"next": self.next}

  def set_state(self, state):
    self.next = state["next"]


def _build(directory, fp, num_batches, n=2, encode_fn=_fake_encode, **kwargs):
  LatentCache.build(directory, fingerprint=fp, batches=_Stream(n, kwargs.get("shard_index", 0),
                                                               kwargs.get("shard_count", 1)),
                    num_batches=num_batches, encode_fn=encode_fn, **kwargs)


def test_latent_cache_roundtrip_refusal_and_atomicity(tmp_path):
  directory = str(tmp_path / "cache")
  fp = {"vae": {"step": 3}, "data": {"clips": 10}}
  _build(directory, fp, 5, batches_per_chunk=2)
  cache = LatentCache.open(directory, fp)
  assert len(cache) == 10 and cache.latent_shape == (2, 2, 2, 1)
  np.testing.assert_array_equal(cache.arrays["label"], np.arange(10))
  assert list(cache.arrays["caption"][:2]) == ["clip 0", "clip 1"]
  with pytest.raises(CacheMismatchError, match=r"vae\.step: cache has 3, run wants 4"):
    LatentCache.open(directory, {"vae": {"step": 4}, "data": {"clips": 10}})

  def failing_encode(video):
    raise RuntimeError("encoder crashed")

  broken = str(tmp_path / "broken")
  with pytest.raises(RuntimeError, match="encoder crashed"):
    _build(broken, fp, 5, encode_fn=failing_encode)
  assert not os.path.exists(broken) and not LatentCache.exists(broken)  # nothing that looks finished


def test_latent_cache_build_resumes_after_a_crash_and_shards_by_process(tmp_path):
  fp = {"data": {"clips": 12}}
  straight = str(tmp_path / "straight")
  _build(straight, fp, 6, batches_per_chunk=2)
  calls = []

  def crash_in_chunk_2(video):
    calls.append(int(video[0, 0, 0, 0, 0]))
    if len(calls) == 5:
      raise RuntimeError("preempted")
    return _fake_encode(video)

  resumed = str(tmp_path / "resumed")
  with pytest.raises(RuntimeError, match="preempted"):
    _build(resumed, fp, 6, batches_per_chunk=2, encode_fn=crash_in_chunk_2)
  assert sorted(os.listdir(resumed + ".partial")) == ["chunk_00000_000.npz", "chunk_00001_000.npz",
                                                      "fingerprint.json"]
  calls.clear()
  _build(resumed, fp, 6, batches_per_chunk=2, encode_fn=crash_in_chunk_2)
  assert calls == [8, 10]  # only chunk 2's batches were encoded again
  for k in ("mean", "label", "caption"):
    np.testing.assert_array_equal(LatentCache.open(resumed, fp).arrays[k], LatentCache.open(straight, fp).arrays[k])

  # A partial build for another fingerprint is not resumed: it starts over.
  other = str(tmp_path / "other")
  with pytest.raises(RuntimeError, match="preempted"):
    calls.clear()
    _build(other, {"data": {"clips": 99}}, 6, batches_per_chunk=2, encode_fn=crash_in_chunk_2)
  counted = []
  _build(other, fp, 6, batches_per_chunk=2, encode_fn=lambda video: counted.append(1) or _fake_encode(video))
  assert len(counted) == 6

  # Two shards (processes, here threads meeting at the same barriers) write their own chunks; the cache holds both
  # shards' clips, chunk by chunk.
  sharded = str(tmp_path / "sharded")
  meet = threading.Barrier(2)
  builds = [threading.Thread(target=_build, args=(sharded, fp, 3),
                             kwargs=dict(shard_index=i, shard_count=2, is_main=i == 0, batches_per_chunk=2,
                                         barrier=lambda name: meet.wait(timeout=60))) for i in range(2)]
  for t in builds:
    t.start()
  for t in builds:
    t.join()
  cache = LatentCache.open(sharded, fp)
  assert cache.meta["shards"][:2] == ["chunk_00000_000.npz", "chunk_00000_001.npz"]
  assert sorted(cache.arrays["label"]) == list(range(12))


def test_latent_iterator_is_a_pure_function_of_its_state(tmp_path):
  directory = str(tmp_path / "cache")
  _build(directory, {}, 3, n=4)
  cache = LatentCache.open(directory, {})
  it = LatentIterator(cache, global_batch=4, seed=0, image_every=3)
  batches = [next(it) for _ in range(7)]
  # Every epoch (3 batches) covers each clip exactly once; epochs are shuffled differently.
  epoch0 = np.concatenate([b["label"] for b in batches[:3]])
  epoch1 = np.concatenate([b["label"] for b in batches[3:6]])
  assert sorted(epoch0) == list(range(12)) and sorted(epoch1) == list(range(12))
  assert not np.array_equal(epoch0, epoch1)
  assert [b["mean"].shape[1] for b in batches] == [2, 2, 1, 2, 2, 1, 2]  # every third batch: images
  resumed = LatentIterator(cache, global_batch=4, seed=0, image_every=3)
  resumed.set_state({"next_batch": 4})
  np.testing.assert_array_equal(next(resumed)["label"], batches[4]["label"])
  # An image phase first: the first 2 batches are images, then every third as before; same clips in the same order.
  phased = LatentIterator(cache, global_batch=4, seed=0, image_every=3, image_first=2)
  phased_batches = [next(phased) for _ in range(7)]
  assert [b["mean"].shape[1] for b in phased_batches] == [1, 1, 1, 2, 2, 1, 2]
  for b, p in zip(batches, phased_batches):
    np.testing.assert_array_equal(b["label"], p["label"])
  # Two processes reassemble the single-process global batch.
  halves = [LatentIterator(cache, global_batch=4, seed=0, process_index=p, process_count=2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([next(h)["label"] for h in halves]), batches[0]["label"])


def test_gradient_accumulation_matches_the_full_batch(t2v_run, tmp_path):
  """grad_accum_steps splits each batch into micro-batches: the same losses (to float round-off) with less memory."""
  from vidgen.train import train_and_evaluate

  common = dict(vae_workdir=os.path.join(t2v_run, "vae"), total_steps=6, log_every=1, checkpoint_every=6,
                sample_every=6, **{"data.cache_dir": os.path.join(t2v_run, "latents"), "eval.at_end": False,
                                   "data.image_every": 3, "data.image_first": 2})
  runs = {}
  for steps in (1, 2):
    workdir = str(tmp_path / f"accum{steps}")
    train_and_evaluate(t2v_config(grad_accum_steps=steps, **common), workdir)
    runs[steps] = [(r["loss"], r["grad_norm"]) for r in read_metrics(workdir)]
  np.testing.assert_allclose(runs[2], runs[1], rtol=1e-5)
  with pytest.raises(ConfigError, match="grad_accum_steps"):
    train_and_evaluate(t2v_config(grad_accum_steps=3, **common), str(tmp_path / "bad"))


def test_eval_metrics_compare_generated_with_real(t2v_run, tmp_path):
  from vidgen.evaluation import evaluate_metrics

  results = evaluate_metrics(t2v_run, ["psnr", "ssim", "lpips"], num_clips=4, batch_size=3, steps=2)
  assert results["num_clips"] == 4 and results["generated_by"] == "dit sampling"
  assert 0.0 < results["psnr"] < 60.0 and -1.0 <= results["ssim"] <= 1.0 and results["lpips"] > 0.0
  with open(os.path.join(t2v_run, "eval.json")) as f:
    assert json.load(f)["metrics"]["psnr"] == results["psnr"]
  # The same clips again: the numbers are a function of (run, seed, num_clips, batch size).
  again = evaluate_metrics(t2v_run, ["psnr"], num_clips=4, batch_size=3, steps=2, write=False)
  assert again["psnr"] == results["psnr"]

  refused = [(dict(metrics=["fvd"]), "at least 9 frames"), (dict(metrics=["fid"]), "fid_weights"),
             (dict(metrics=["psnr"], reference=str(tmp_path)), "reference folder does not pair"),
             (dict(metrics=["kid"]), "choose from")]
  for kwargs, message in refused:
    with pytest.raises(InputError, match=message):
      evaluate_metrics(t2v_run, num_clips=2, batch_size=2, steps=1, write=False, **kwargs)
