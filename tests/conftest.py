"""Shared test settings: quiet TF/XLA logs, float32 matmuls on CPU, and tiny-config factories."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests compile far more than they compute. XLA's backend optimisation level 0 halves the compile time of a tiny
# model on CPU, and one persistent compilation cache shared by the pytest workers and every process they start (CLI
# runs, the notebook's kernel) compiles each repeated program, such as the same train step in many runs, once. Set in
# the environment, before JAX is imported, so that those processes inherit it; cli_runs passes the same settings.
import cli_runs  # noqa: E402  (standard library only: JAX is not imported yet)

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {cli_runs.XLA_FAST_COMPILE}".strip()
for _name, _value in cli_runs.CACHE_ENV.items():
  os.environ.setdefault(_name, _value)

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


def experiment_config(name: str, arg: str | None = None, **overrides) -> ml_collections.ConfigDict:
  """experiments/NAME.py's get_config(arg), with dotted-key overrides ("data.cache_dir": ...)."""
  import pathlib

  from vidgen.config import load_config_file

  config = load_config_file(str(pathlib.Path(__file__).parent.parent / "experiments" / f"{name}.py"), arg)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def tiny_train_config(**overrides) -> ml_collections.ConfigDict:
  """experiments/shapes_vae.py:runlocal (a VAE train run of a few seconds), with dotted-key overrides."""
  return experiment_config("shapes_vae", "runlocal", **overrides)


# With `--dist loadfile` (pytest.ini) every file is one unit of work, handed out in collection order. Integration
# files train models and take minutes each on a 2-core CPU; handing them out first keeps a worker from running one of
# them alone at the end while the other sits idle.
def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: "integration" not in item.path.parts)  # stable: order within a file is kept
