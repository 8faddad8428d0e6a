"""LoRA fine-tuning end to end on tiny settings: a runlocal text-to-video base run, then a runlocal LoRA run that adds
the color "orange" (experiments/shapes_lora.py) through `stages.train_and_evaluate`; adapter-only checkpoints, an
untouched base, learning, exact resume, the pipeline with `lora=`, `vidgen lora merge` and the benchmark."""

import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from conftest import experiment_config
from vidgen.errors import InputError
from vidgen.models import lora

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 30


def lora_config(base, **overrides):
  fields = {"base_workdir": base, "total_steps": STEPS, "checkpoint_every": 10, "sample_every": STEPS,
            "log_every": 1, "optimizer.warmup_steps": 3, "optimizer.lr": 1e-2, **overrides}
  return experiment_config("shapes_lora", "runlocal", **fields)


def files_digest(directory) -> dict[str, str]:
  out = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
  """(base run, LoRA run, digest of the base run's files before the fine-tune)."""
  from vidgen.train import train_and_evaluate

  root = tmp_path_factory.mktemp("lora")
  base = str(root / "base")
  # Long enough for the zero-initialised output layer (which no adapter targets) to carry the blocks' changes.
  train_and_evaluate(experiment_config("shapes_t2v", "runlocal", total_steps=40, sample_every=40, checkpoint_every=40,
                                       **{"optimizer.lr": 3e-3, "optimizer.warmup_steps": 5}), base)
  before = files_digest(base)
  tuned = str(root / "orange")
  train_and_evaluate(lora_config(base), tuned)
  return base, tuned, before


def _trainer(config, workdir):
  from vidgen import runs
  from vidgen.parallel import make_mesh
  from vidgen.train import lora_trainer, stages

  config = lora_trainer.resolve_config(stages.with_absolute_paths(config))
  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  vae, vae_step = runs.load_vae(config.vae_workdir, mesh)
  cache = stages.latent_cache(config, workdir, vae, vae_step, mesh)
  return lora_trainer.LoRATrainer(config, mesh, workdir, vae=vae, cache=cache)


def _fixed_loss(trainer, trainable, batch) -> float:
  """The run's v-loss of the adapted model at fixed times and noise on a fixed batch (training losses are noisy)."""
  from vidgen.models.dit import Conditioning

  params = trainer.model_params(trainable)
  x = (batch["mean"] - trainer.latent_shift) / trainer.latent_scale
  dit = nnx.merge(trainer.graphs["dit"], params["dit"])
  text = nnx.merge(trainer.graphs["text"], params["text"])(batch["ids"], batch["mask"])
  cond = Conditioning(text=text, text_mask=batch["mask"])
  losses = [trainer.objective.loss(lambda z, t: dit(z, t, cond), x, jax.random.key(i), t=jnp.full((x.shape[0],), t))
            for i, t in enumerate((0.2, 0.4, 0.6, 0.8))]
  return float(jnp.mean(jnp.stack(losses)))


def test_checkpoints_hold_adapters_only_and_the_base_is_untouched(runs_dir):
  from vidgen import runs

  base, tuned, before = runs_dir
  assert files_digest(base) == before
  config = runs.read_config(tuned)
  assert config.trainer == "lora" and config.base_workdir == base and list(config.lora.new_words) == ["orange"]
  assert config.dit.to_dict() == runs.read_config(base).dit.to_dict()  # the model is the base's
  assert config.text.vocab_size == runs.read_config(base).text.vocab_size + 1
  assert os.path.exists(os.path.join(tuned, "latents", "meta.json")) and not os.path.exists(os.path.join(tuned, "vae"))

  step = runs.latest_step(tuned)
  assert step == STEPS
  saved = ocp.PyTreeCheckpointer().metadata(os.path.join(tuned, "checkpoints", str(step), "state"))
  saved = getattr(getattr(saved, "item_metadata", saved), "tree", saved)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(saved)]
  weights = [p for p in paths if p.startswith("['params']") or p.startswith("['ema_params']")]
  assert weights and all(p.endswith("['lora_a']") or p.endswith("['lora_b']") or p.endswith("['words']")
                         for p in weights), weights
  assert not any(p.endswith("['kernel']") or "embedding" in p or "['bias']" in p for p in paths)
  size = lambda d: sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(d) for n in ns)  # noqa: E731
  assert size(os.path.join(tuned, "checkpoints", str(step))) < 0.6 * size(os.path.join(base, "checkpoints", "40"))

  adapters = runs.load_lora(tuned)
  assert adapters.step == STEPS and adapters.words.shape == (1, config.text.width)
  assert all(np.any(np.asarray(a["lora_b"])) for _, a in lora.adapter_items(adapters.adapters))  # all trained
  metrics = read_metrics(tuned)
  assert [r["step"] for r in metrics] == list(range(1, STEPS + 1))
  assert "eval_extra_color" in metrics[-1] and metrics[-1]["eval_extra_count"] == 1


def test_adapters_start_at_the_base_and_lower_the_loss(runs_dir):
  from vidgen import runs
  from vidgen.train.loop import restore_state

  base, tuned, _ = runs_dir
  trainer = _trainer(lora_config(base), tuned)
  initial = trainer.init_state(jax.random.key(0))
  start = trainer.model_params(initial.params)
  base_run = runs.load_dit(base)
  jax.tree.map(np.testing.assert_array_equal, start["dit"], base_run.networks["dit"][1])
  table = np.asarray(start["text"]["token_embed"]["embedding"])
  base_table = np.asarray(base_run.networks["text"][1]["token_embed"]["embedding"])
  np.testing.assert_array_equal(table[:-1], base_table)
  # "orange" starts at the mean of "red" and "yellow" (ids 3 and 6: padding, "a", "moving", then the colors).
  np.testing.assert_allclose(table[-1], (base_table[3] + base_table[6]) / 2, rtol=1e-6)

  trained = restore_state(trainer, tuned, STEPS)
  fraction = trainer.trainable_fraction()
  assert fraction["trainable"] == sum(x.size for x in jax.tree.leaves(trained.params))
  it = trainer.make_iterator(0, 1)
  it.image_every = 0
  batches = [next(it) for _ in range(4)]
  assert any("orange" in c for b in batches for c in b["caption"])
  # Deterministic (same noise, same t, same clips): lower on every batch, and by more than 1% on average. On this
  # 40-step base the frozen weights leave less to gain than a fresh model has.
  before = np.asarray([_fixed_loss(trainer, initial.params, b) for b in batches])
  after = np.asarray([_fixed_loss(trainer, trained.params, b) for b in batches])
  assert np.all(after < before) and after.mean() < 0.99 * before.mean(), (before, after)


class _Crash(Exception):
  pass


def test_a_resumed_fine_tune_equals_an_uninterrupted_one(runs_dir, tmp_path, monkeypatch):
  from vidgen.train import train_and_evaluate
  from vidgen.train.lora_trainer import LoRATrainer

  base, tuned, _ = runs_dir
  common = {"data.cache_dir": os.path.join(tuned, "latents"), "eval.at_end": False}
  parts = str(tmp_path / "parts")
  original, calls = LoRATrainer.host_batch, {"n": 0}

  def crashing(self, batch):
    calls["n"] += 1
    if calls["n"] == 1 + 15:  # one peek at start-up, then one per step: crash fetching step 15's batch
      raise _Crash()
    return original(self, batch)

  monkeypatch.setattr(LoRATrainer, "host_batch", crashing)
  with pytest.raises(_Crash):
    train_and_evaluate(lora_config(base, **common), parts)
  monkeypatch.setattr(LoRATrainer, "host_batch", original)
  train_and_evaluate(lora_config(base, **common), parts)  # resumes from the checkpoint at step 10
  assert len(read_metrics(parts)) == STEPS
  assert [r["loss"] for r in read_metrics(parts)] == [r["loss"] for r in read_metrics(tuned)]


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "vidgen.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_pipeline_adapters_and_the_merged_run_generate_the_same_video(runs_dir, tmp_path):
  from vidgen.pipeline import VideoPipeline

  base, tuned, _ = runs_dir
  prompt = "a orange circle moving up"
  adapted = VideoPipeline.from_workdir(base, lora=tuned)
  video = adapted(prompt, num_frames=5, steps=3, seed=1)
  latent = adapted(prompt, num_frames=5, steps=3, seed=1, output="latent")
  np.testing.assert_array_equal(VideoPipeline.from_workdir(tuned)(prompt, num_frames=5, steps=3, seed=1), video)

  merged = str(tmp_path / "merged")
  done = _cli("lora", "merge", "--workdir", tuned, "--output", merged)
  assert done.returncode == 0, done.stderr[-2000:]
  from vidgen import runs

  assert runs.read_config(merged).trainer == "dit" and runs.is_finished(merged)
  from_merged = VideoPipeline.from_workdir(merged)
  np.testing.assert_allclose(from_merged(prompt, num_frames=5, steps=3, seed=1, output="latent"), latent, atol=1e-5)
  np.testing.assert_array_equal(from_merged(prompt, num_frames=5, steps=3, seed=1), video)
  # The raw (non-EMA) weights are merged too.
  raw = VideoPipeline.from_workdir(base, lora=tuned, ema=False)(prompt, num_frames=5, steps=3, seed=1, output="latent")
  np.testing.assert_allclose(VideoPipeline.from_workdir(merged, ema=False)(prompt, num_frames=5, steps=3, seed=1,
                                                                          output="latent"), raw, atol=1e-5)

  # Weights: 0 gives the base on old prompts; the same adapters twice at 0.5 each (one adds words) give weight 1's
  # model up to float round-off; two adapters that both add words are refused.
  old = "a red square moving left"
  base_pipe = VideoPipeline.from_workdir(base)
  np.testing.assert_array_equal(VideoPipeline.from_workdir(base, lora=[(tuned, 0.0)])(old, num_frames=5, steps=3,
                                                                                         seed=1), base_pipe(
      old, num_frames=5, steps=3, seed=1))
  with pytest.raises(InputError, match="add caption words"):
    VideoPipeline.from_workdir(base, lora=[(tuned, 0.5), (tuned, 0.5)])
  with pytest.raises(InputError, match="'orange' is not in the vocabulary"):
    base_pipe(prompt, num_frames=5, steps=3)
  with pytest.raises(InputError, match="lora: expected a workdir"):
    VideoPipeline.from_workdir(base, lora=[tuned])

  out = str(tmp_path / "orange.mp4")
  done = _cli("sample", "--workdir", base, "--lora", f"{tuned}:1", "--prompt", prompt, "--output", out,
              "--num_frames", "5", "--steps", "3", "--seed", "1")
  assert done.returncode == 0 and os.path.exists(out), done.stderr[-2000:]
  done = _cli("lora", "merge", "--workdir", tuned, "--output", merged)  # a user's mistake: one line, exit code 2
  assert done.returncode == 2 and "vidgen lora: error:" in done.stderr and "already holds a run" in done.stderr
  assert "Traceback" not in done.stderr


def test_lora_benchmark_reports_fraction_memory_and_generation(runs_dir, capsys):
  from vidgen.benchmarks import lora as bench

  _, tuned, _ = runs_dir
  bench.main(["--workdir", tuned, "--new_samples", "1", "--old_samples", "1", "--batch", "48", "--vae_clips", "4"])
  out = capsys.readouterr().out
  with open(os.path.join(tuned, "lora_benchmark.json")) as f:
    results = json.load(f)
  p = results["parameters"]
  assert 0 < p["trainable"] < p["base"] and p["fraction"] == p["trainable"] / p["base"]
  for name in ("lora", "full"):
    m = results["memory"][name]
    assert m["total"] == m["argument"] + m["output"] + m["temp"] - m["alias"] > 0
  # The full fine-tune's donated state (every weight, its moments and EMA) is larger than the LoRA state.
  assert results["memory"]["full"]["alias"] > results["memory"]["lora"]["alias"]
  assert results["new_concept"]["color"]["count"] == 12 and results["old_prompts"]["base"]["all"]["count"] == 84
  truth = results["vae_reference"]["ground_truth"]["color"]
  assert truth["rate"] == 1.0 and truth["count"] == 4  # the reader's palette reads ground-truth orange as orange
  assert "| new color (12 x 1) | LoRA |" in out and "LoRA / full:" in out
