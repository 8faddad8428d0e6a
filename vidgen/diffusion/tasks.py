"""Frame conditioning: one mechanism for image-to-video, extension, interpolation, loops and long videos.

Some latent frames of a clip are known (`known`, bool `[B, T]`) and the rest are generated. The DiT sees the known
frames twice (W.A.L.T, arXiv 2312.06662; Open-Sora-Plan): clean in place of their noisy latents, and in its task
channels as `[known * x, known]` (C + 1 channels, `task_channels(C)`), so it is told which frames are given. The
loss counts only the unknown frames (`loss_mask`). A sampler keeps the known frames clean at every evaluation
(`frame_conditioned`), and they are written back into the sample at the end (`fill_known`).

Training draws a task per example (`draw_known`) with the probabilities of `config.tasks` (TASKS):
  text_to_video     nothing known;
  image_to_video    the first latent frame (= the first pixel frame alone, under a causal VAE);
  extend_forward    the first k latent frames, k uniform in [1, T - 1];
  extend_backward   the last k latent frames;
  interpolate       the first a and the last b latent frames, a, b >= 1, a + b <= T - 1.
Clips too short for a task (1-frame images: every task but text-to-video; 2 latent frames: interpolation) train as
text-to-video. Classifier-free guidance drops the caption only: the frame condition is kept in both branches.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

TASKS = ("text_to_video", "image_to_video", "extend_forward", "extend_backward", "interpolate")


def task_channels(latent_channels: int) -> int:
  """The DiT's `task_channels` for frame conditioning: the known latents (C) and the mask (1)."""
  return latent_channels + 1


def task_probabilities(config: Mapping[str, Any] | None) -> dict[str, float]:
  """`config.tasks` -> {task: probability}, normalized; None / missing = text-to-video only.

  Raises:
    ValueError: unknown task names, negative or non-numeric weights, or all weights zero.
  """
  if config is None:
    return {"text_to_video": 1.0}
  weights = dict(config)
  unknown = sorted(set(weights) - set(TASKS))
  if unknown:
    raise ValueError(f"tasks: unknown task(s) {unknown}; allowed {TASKS}")
  for name, w in weights.items():
    if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
      raise ValueError(f"tasks.{name}: must be a number >= 0 (a relative weight), got {w!r}")
  total = float(sum(weights.values()))
  if total <= 0:
    raise ValueError("tasks: every weight is 0; give text_to_video=1 for text-to-video only")
  return {name: float(weights.get(name, 0.0)) / total for name in TASKS}


def uses_frame_tasks(config: Mapping[str, Any] | None) -> bool:
  """True when `config.tasks` trains any task besides text-to-video (the DiT then needs its task channels)."""
  return config is not None and any(p > 0 for name, p in task_probabilities(config).items()
                                    if name != "text_to_video")


def draw_known(key: Array, batch: int, frames: int, probabilities: Mapping[str, float]) -> Array:
  """A task per example, as a known-frame mask: bool `[batch, frames]` (see the module docstring)."""
  probs = np.asarray([probabilities.get(name, 0.0) for name in TASKS], np.float64)
  k_task, k_k, k_a, k_b = jax.random.split(key, 4)
  task = jax.random.choice(k_task, len(TASKS), (batch,), p=jnp.asarray(probs / probs.sum(), jnp.float32))
  if frames < 2:
    return jnp.zeros((batch, frames), bool)
  index = jnp.arange(frames)[None, :]
  # Extension: k in [1, T - 1]. Interpolation: a in [1, T - 2], then b in [1, T - 1 - a].
  k = jax.random.randint(k_k, (batch, 1), 1, frames)
  a = jax.random.randint(k_a, (batch, 1), 1, max(frames - 1, 2))
  b = 1 + jnp.floor(jax.random.uniform(k_b, (batch, 1)) * (frames - 1 - a)).astype(jnp.int32)
  masks = jnp.stack([
      jnp.zeros((batch, frames), bool),
      jnp.broadcast_to(index == 0, (batch, frames)),
      index < k,
      index >= frames - k,
      (index < a) | (index >= frames - b) if frames >= 3 else jnp.zeros((batch, frames), bool),
  ])
  return jnp.take_along_axis(masks, task[None, :, None], axis=0)[0]


def _per_frame(known: Array, like: Array) -> Array:
  """bool `[B, T]` -> `[B, T, 1, 1, 1]`, broadcasting over a latent `[B, T, H, W, C]`."""
  return known.reshape(known.shape + (1,) * (like.ndim - known.ndim))


def task_inputs(x: Array, known: Array) -> Array:
  """The DiT's task channels `[B, T, H, W, C + 1]`: the known latents (zeros elsewhere) and the mask.

  Args:
    x: `[B, T, H, W, C]` latents (normalized); only the known frames are read.
    known: bool `[B, T]`.
  """
  m = _per_frame(known, x)
  mask = jnp.broadcast_to(m, (*x.shape[:-1], 1)).astype(x.dtype)
  return jnp.concatenate([jnp.where(m, x, 0).astype(x.dtype), mask], axis=-1)


def fill_known(z: Array, x: Array, known: Array) -> Array:
  """`z` with the known frames replaced by `x`'s: `[B, T, H, W, C]`."""
  return jnp.where(_per_frame(known, z), x.astype(z.dtype), z)


def loss_mask(known: Array) -> Array:
  """Per-frame loss weights `[B, T]`: 1 on the generated frames, 0 on the given ones."""
  return (~known).astype(jnp.float32)


def frame_conditioned(denoise_fn: Callable[..., Array], x: Array, known: Array) -> Callable[..., Array]:
  """A denoiser that sees the known frames of `x` clean: `(z_t, t, *rest) -> denoise_fn(fill_known(z_t), t, *rest)`.

  The task channels are the caller's (they are part of the conditioning); this only keeps the noisy input's known
  frames clean, as in training, so what the sampler does to them never reaches the model.
  """

  def denoise(z_t: Array, t: Array, *rest) -> Array:
    return denoise_fn(fill_known(z_t, x, known), t, *rest)

  return denoise
