"""The real-data experiments end to end on files the tests write: video_vae on a folder with broken files (skips
counted, exact resume after SIGKILL), video_t2v with a frozen T5 (captions cached with the latents, `vidgen sample`),
dit_imagenet on an ImageNet-layout folder."""

import os

import imageio.v2 as imageio
import numpy as np
import pytest
from conftest import experiment_config

import cli_runs
from text_checkpoints import save_tiny_t5
from vidgen.config import ConfigError


def _pan_videos(directory, count, *, frames=24, size=(40, 56), seed=0, captions=True):
  """`count` mp4 files: a smooth pan across a random texture, with sidecar captions from the shapes words."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  words = ("red", "green", "blue", "circle", "square", "triangle")
  for i in range(count):
    texture = np.kron(rng.integers(0, 256, (size[0] // 4 + frames, size[1] // 4 + frames, 3)), np.ones((4, 4, 1)))
    video = np.stack([texture[t:t + size[0], 2 * t:2 * t + size[1]] for t in range(frames)]).astype(np.uint8)
    path = os.path.join(directory, f"clip_{i:02d}.mp4")
    imageio.mimwrite(path, video, fps=24, macro_block_size=1)
    if captions:
      with open(path[:-4] + ".txt", "w") as f:
        f.write(f"a {words[i % 3]} {words[3 + i % 3]} moving left\n")


def _broken_files(directory):
  with open(os.path.join(directory, "corrupt.mp4"), "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
  open(os.path.join(directory, "empty.webm"), "wb").close()


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("videos"))
  _pan_videos(directory, 8)
  _broken_files(directory)
  return directory


def test_video_vae_on_files_counts_skips_and_resumes_exactly_after_sigkill(video_dir, tmp_path):
  workdir, reference = tmp_path / "interrupted", tmp_path / "straight"
  common = [*cli_runs.STEADY, f"--config.data.path={video_dir}", "--config.checkpoint_every=2",
            "--config.data.eval_records=0"]  # validation = the training files
  endless = [*common, "--config.total_steps=100000", "--config.data.num_workers=1"]
  run = cli_runs.Run(workdir, *endless, config="video_vae.py:runlocal")
  run.wait_for(lambda line: line.startswith("step ") and max(cli_runs.checkpoint_steps(workdir) or [0]) >= 4)
  run.proc.kill()
  run.finish()
  last = max(cli_runs.checkpoint_steps(workdir))

  total = f"--config.total_steps={last + 3}"
  done = cli_runs.train(workdir, *endless, total, config="video_vae.py:runlocal")
  assert done.returncode == 0, done.stdout[-3000:]
  assert f"at step {last}" in done.stdout
  # The uninterrupted run decodes in this process (no workers): the same stream either way.
  straight = cli_runs.train(reference, *common, total, "--config.data.num_workers=0", config="video_vae.py:runlocal")
  assert straight.returncode == 0, straight.stdout[-3000:]
  resumed, uninterrupted = cli_runs.records(workdir), cli_runs.records(reference)
  tail = {r["step"]: r for r in resumed if r["step"] > last}
  for b in uninterrupted:
    if b["step"] in tail:
      a = tail[b["step"]]
      assert (a["loss"], a["data_read"], a["data_skipped"]) == (b["loss"], b["data_read"], b["data_skipped"]), b["step"]
  # Both broken files were met, skipped with their reason, and counted.
  assert uninterrupted[-1]["data_skipped"] >= 2
  assert "corrupt.mp4: " in straight.stdout and "empty.webm: empty file (0 bytes)" in straight.stdout


def test_video_t2v_with_a_frozen_t5_caches_captions_and_samples(video_dir, tmp_path):
  from vidgen.pipeline import VideoPipeline
  from vidgen.train import train_and_evaluate

  t5 = str(tmp_path / "t5")
  width = save_tiny_t5(t5)
  overrides = {"data.path": video_dir, "text.path": t5, "dit.text_dim": width, "vae_stage.data.eval_records": 0}
  with pytest.raises(ConfigError, match=rf"config\.dit\.text_dim: must equal the text encoder's width {width}"):
    train_and_evaluate(experiment_config("video_t2v", "runlocal", **{**overrides, "dit.text_dim": 8}),
                       str(tmp_path / "bad"))
  workdir = str(tmp_path / "t2v")
  train_and_evaluate(experiment_config("video_t2v", "runlocal", **overrides), workdir)
  with np.load(os.path.join(workdir, "latents", "chunk_00000_000.npz")) as chunk:
    assert chunk["text"].shape == (4, 8, width) and chunk["text"].dtype == np.float16  # 2 batches of 2
    assert chunk["text_mask"].shape == (4, 8) and chunk["text_mask"][:, 0].all()
  pipe = VideoPipeline.from_workdir(workdir)
  assert "text" not in pipe.networks  # the frozen encoder is not part of the run's weights
  a, b = (pipe([p], output="latent", steps=2, seed=0, num_frames=5) for p in ("a red circle", "a blue square"))
  assert np.isfinite(a).all() and not np.allclose(a, b)
  out = str(tmp_path / "sample.mp4")
  done = cli_runs.python(f"from vidgen.cli import run; import sys; sys.argv = ['vidgen', 'sample', "
                         f"'--workdir={workdir}', '--prompt=a green triangle', '--output={out}', '--steps=2']; run()")
  assert done.returncode == 0 and os.path.getsize(out) > 0, done.stdout[-2000:]
  # Files have no evaluation of their own (yet): `vidgen eval` says so instead of claiming it wrote eval.json.
  done = cli_runs.python("from vidgen.cli import run; import sys; "
                         f"sys.argv = ['vidgen', 'eval', '--workdir={workdir}']; run()")
  assert done.returncode == 2 and "data source 'files' has no evaluation of its own yet" in done.stdout, \
      done.stdout[-2000:]
  assert not os.path.exists(os.path.join(workdir, "eval.json"))


def test_dit_imagenet_runlocal_trains_on_class_folders(tmp_path):
  from vidgen.data.latent_cache import LatentCache
  from vidgen.pipeline import VideoPipeline
  from vidgen.train import train_and_evaluate

  colors = {"n01": (200, 30, 30), "n02": (30, 200, 30), "n03": (30, 30, 200), "n04": (200, 200, 30)}
  rng = np.random.default_rng(0)
  for name, color in colors.items():
    os.makedirs(tmp_path / "train" / name)
    for i in range(3):
      image = np.clip(np.asarray(color) + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
      imageio.imwrite(tmp_path / "train" / name / f"{i}.{'png' if i % 2 else 'jpg'}", image)
  workdir = str(tmp_path / "dit")
  train_and_evaluate(experiment_config("dit_imagenet", "runlocal", **{"data.path": str(tmp_path / "train")}), workdir)
  cache = LatentCache.open(os.path.join(workdir, "latents"), _meta_fingerprint(workdir))
  assert sorted(set(cache.arrays["label"])) == [0, 1, 2, 3] and cache.latent_shape == (1, 4, 4, 4)
  pipe = VideoPipeline.from_workdir(workdir)
  video = pipe(["n02", "1"], steps=2, seed=0, num_frames=1)
  assert video.shape == (2, 1, 32, 32, 3)


def _meta_fingerprint(workdir):
  import json

  with open(os.path.join(workdir, "latents", "meta.json")) as f:
    return json.load(f)["fingerprint"]
