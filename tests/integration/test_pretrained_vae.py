"""A DiT run on a published VAE (`config.pretrained_vae`, a diffusers folder): the VAE stage is replaced, the latent
cache is encoded by that VAE with its own latent statistics, and the pipeline decodes with it."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from conftest import experiment_config  # noqa: E402
from vidgen.config import ConfigError  # noqa: E402
from vidgen.models import WanVAE, load_pretrained_vae  # noqa: E402
from vidgen.pipeline import VideoPipeline  # noqa: E402
from vidgen.train import stages, train_and_evaluate  # noqa: E402

Z = 8  # the runlocal DiT's latent channels


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=Z, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                   latents_mean=rng.normal(0, 0.5, Z).tolist(),
                                   latents_std=rng.uniform(0.5, 2.0, Z).tolist())
  path = str(tmp_path_factory.mktemp("wan_vae"))
  vae.save_pretrained(path)
  return path


def test_dit_run_trains_and_samples_on_a_pretrained_vae(wan_folder, tmp_path):
  workdir = str(tmp_path / "run")
  config = experiment_config("shapes_t2v", "runlocal", pretrained_vae=wan_folder)
  train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "vae"))  # no VAE stage was trained
  with open(os.path.join(workdir, "latents", "meta.json")) as f:
    assert json.load(f)["fingerprint"]["vae"]["config"]["z_dim"] == Z  # encoded by the Wan VAE
  pipe = VideoPipeline.from_workdir(workdir)
  assert isinstance(pipe.vae_config, dict) and pipe.vae_config["temporal_downsample"] == 4
  video = pipe("a red circle moving up", num_frames=5, steps=2)
  assert video.shape == (5, 32, 32, 3) and video.dtype == np.uint8
  wan = load_pretrained_vae(wan_folder)
  assert isinstance(wan, WanVAE)
  np.testing.assert_allclose(np.asarray(wan.latent_shift[...]),
                             np.asarray(diffusers.AutoencoderKLWan.from_pretrained(wan_folder).config.latents_mean),
                             rtol=1e-6)


def test_pretrained_vae_is_checked_with_the_config(wan_folder, tmp_path):
  config = experiment_config("shapes_t2v", "runlocal", pretrained_vae=str(tmp_path / "absent"))
  with pytest.raises(ConfigError, match="pretrained_vae.*no config.json"):
    stages.validate(config)
  config = experiment_config("shapes_t2v", "runlocal", pretrained_vae=wan_folder, vae_workdir=str(tmp_path))
  with pytest.raises(ConfigError, match="give one"):
    stages.validate(config)
  config = experiment_config("shapes_t2v", "runlocal", pretrained_vae=wan_folder)
  config.dit.in_channels = 16
  with pytest.raises(ConfigError, match="dit.in_channels"):
    stages.validate(config)
