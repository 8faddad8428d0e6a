"""Shared test settings: quiet TF/XLA logs, float32 matmuls on CPU, and tiny-config factories."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "float32")


def tiny_vae_config(**overrides) -> ml_collections.ConfigDict:
  """A VAE small enough to compile and run in about a second on CPU, with the default 4x/8x factors."""
  from vidgen.models.vae import default_vae_config

  config = default_vae_config()
  config.channels = (8, 16, 16)
  config.stem_patch = 2
  config.update(overrides)
  return config


@pytest.fixture
def vae_config():
  return tiny_vae_config()


def tiny_train_config(**overrides) -> ml_collections.ConfigDict:
  """experiments/shapes_vae.py:runlocal (a VAE train run of a few seconds), with dotted-key overrides."""
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).parent.parent / "experiments" / "shapes_vae.py"
  spec = importlib.util.spec_from_file_location("shapes_vae_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("runlocal")
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
