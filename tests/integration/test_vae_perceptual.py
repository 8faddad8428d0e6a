"""The VAE's LPIPS perceptual term: its value in the step's loss and metrics, the adaptive GAN weight, config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_train_config
from flax import nnx

from vidgen.config import ConfigError
from vidgen.metrics.lpips import lpips
from vidgen.parallel import make_mesh
from vidgen.train import vae_trainer

WEIGHT = 0.5


def _trainer(tmp_path, weight, name="lpips_alex"):
  # Whole 32x32 frames (the runlocal 16x16 crops are below AlexNet's smallest input) and clips only.
  config = tiny_train_config(**{"data.crop_size": 0, "data.image_every": 0, "loss.perceptual_weight": weight,
                                "loss.perceptual": name})
  vae_trainer.validate_config(config, {"data": 1, "fsdp": 1, "tensor": 1})
  return vae_trainer.VAETrainer(config, make_mesh(dict(config.mesh)), str(tmp_path))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(trainer without the term, trainer with it, a state with a random output layer, a batch)."""
  off = _trainer(tmp_path_factory.mktemp("off"), 0.0, name="")
  on = _trainer(tmp_path_factory.mktemp("on"), WEIGHT)
  state = off.init_state(jax.random.key(0))
  # The output layer starts at zero (a constant decoder); random weights make the reconstruction depend on z.
  head = state.params["decoder"]["head"]["conv"]
  head["kernel"] = 0.1 * jax.random.normal(jax.random.key(7), head["kernel"].shape)
  batch = {"video": jnp.asarray(off.host_batch(next(off.make_iterator(0, 1)))["video"])}
  return off, on, state, batch


def _step(trainer, state, batch, use_gan=False):
  return jax.jit(trainer.train_step, static_argnums=2)(state, batch, use_gan)[1]


def test_the_step_adds_weight_times_lpips_and_logs_it(setup):
  off, on, state, batch = setup
  aux_off, aux_on = _step(off, state, batch), _step(on, state, batch)
  # The same reconstruction computed outside the step: the posterior sample drawn with the step's key.
  x = batch["video"].astype(jnp.float32) / 127.5 - 1.0
  key = jax.random.fold_in(jax.random.key(off.config.seed), 0)

  @jax.jit
  def reference(state):
    vae = off.vae(state)
    recon = vae.decode(vae.encode(x).sample(key))
    return recon, jnp.mean(lpips(recon, x))

  recon, expected = reference(state)
  expected = float(expected)
  assert expected > 0.05
  np.testing.assert_allclose(aux_on["perceptual"], expected, rtol=1e-4)
  np.testing.assert_allclose(aux_on["rec_loss"] - aux_off["rec_loss"], WEIGHT * expected, rtol=1e-3)
  np.testing.assert_allclose(aux_on["loss"] - aux_off["loss"], WEIGHT * expected, rtol=1e-3)
  # Off, the step is the plain L2 objective of shapes_vae (l1_weight 0, l2_weight 1) and logs no perceptual value.
  assert "perceptual" not in aux_off
  np.testing.assert_allclose(aux_off["rec_loss"], jnp.mean(jnp.square(recon - x)), rtol=1e-4)
  assert np.isfinite(aux_on["grad_norm"]) and aux_on["grad_norm"] != aux_off["grad_norm"]


def test_the_adaptive_gan_weight_counts_the_perceptual_term(setup):
  off, on, state, batch = setup
  x = batch["video"].astype(jnp.float32) / 127.5 - 1.0

  @jax.jit
  def weights(state):
    vae = off.vae(state)
    _, features = vae.decode_with_features(vae.encode(x).mode())
    disc = nnx.merge(off.disc_graph, state.disc_params)
    # taming-transformers' rule with rec = L2 + WEIGHT x LPIPS, from the output layer's gradients.
    _, head_params = nnx.split(vae.decoder.head, nnx.Param)
    head = lambda p: nnx.merge(off.head_graph, p)(features)
    rec = lambda p: jnp.mean(jnp.square(head(p) - x)) + WEIGHT * jnp.mean(lpips(head(p), x))
    gan = lambda p: -jnp.mean(disc(head(p)))
    norm = lambda f: jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(jax.grad(f)(head_params))))
    cfg = on.config.loss
    expected = cfg.gan_weight * jnp.minimum(norm(rec) / (norm(gan) + 1e-4), cfg.adaptive_weight_max)
    return off._adaptive_weight(vae, features, x, disc), on._adaptive_weight(vae, features, x, disc), expected

  weight_off, weight_on, expected = weights(state)
  np.testing.assert_allclose(weight_on, expected, rtol=1e-3)
  assert abs(weight_off - weight_on) > 1e-3 * expected


@pytest.mark.parametrize("overrides,message", [
    ({"loss.perceptual_weight": -0.1}, r"loss\.perceptual_weight: must be >= 0, got -0\.1"),
    ({"loss.perceptual_weight": 1.0, "loss.perceptual": "lpips_vgg16"},
     r"loss\.perceptual: 'lpips_vgg16' is not registered \(known: \[.*'lpips_alex', 'lpips_vgg'.*\]\)"),
    ({"loss.perceptual_weight": 1.0, "loss.perceptual": "lpips_alex"},  # runlocal trains on 16x16 crops
     r"loss\.perceptual: 'lpips_alex' needs training frames of at least 31x31 pixels, got 16"),
    ({"loss.perceptual_weight": 1.0, "loss.perceptual": "lpips_vgg", "data.crop_size": 8},
     r"loss\.perceptual: 'lpips_vgg' needs training frames of at least 16x16 pixels, got 8"),
])
def test_bad_perceptual_config_is_refused(overrides, message):
  with pytest.raises(ConfigError, match=message):
    vae_trainer.validate_config(tiny_train_config(**overrides), {"data": 1, "fsdp": 1, "tensor": 1})


def test_lpips_configs_that_fit_are_accepted():
  mesh = {"data": 1, "fsdp": 1, "tensor": 1}
  vae_trainer.validate_config(tiny_train_config(**{"loss.perceptual_weight": 1.0, "loss.perceptual": "lpips_vgg"}),
                              mesh)
  vae_trainer.validate_config(tiny_train_config(**{"loss.perceptual_weight": 1.0, "loss.perceptual": "lpips_alex",
                                                   "data.crop_size": 0}), mesh)
  vae_trainer.validate_config(tiny_train_config(), mesh)  # the default: off, no name needed
