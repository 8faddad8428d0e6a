"""Classifier-free guidance (arXiv 2207.12598) as a denoiser combinator, with guidance rescale (arXiv 2305.08891).

  v_guided = v_u + w (v_c - v_u)

w = 1 is the conditional model, w = 0 the unconditional one. Large w over-saturates samples, most visibly with zero
terminal SNR; guidance rescale pulls the per-example standard deviation of the guided prediction back towards that
of the conditional one:

  v_rescaled = v_guided * std(v_c) / std(v_guided),   v_final = phi v_rescaled + (1 - phi) v_guided,

with std over all non-batch axes.

Guidance can be limited to an interval of noise levels (arXiv 2404.07724): w applies where t_lo <= t <= t_hi and
the plain conditional model (w = 1) elsewhere. The paper finds guidance harmful at the highest noise levels (it
collapses the layouts a condition allows) and unnecessary at the lowest; on the embedded shapes data, guidance 4 at
t < 0.5 rounds off the corners of squares that guidance 1 keeps (`vidgen.benchmarks.renoise`). Steps outside the
interval cost one conditional evaluation instead of two.

The rescale acts on the v-prediction, i.e. on the model output, exactly as
diffusers' `rescale_noise_cfg` does in its v-prediction pipelines; this keeps the combinator independent of the
schedule. (Rescaling the x-prediction x = alpha z - sigma v instead is not equivalent: the shared alpha z term changes
the stds. The two agree at t = 1 with zero terminal SNR, where alpha = 0.)

Public names:
  classifier_free_guidance: wraps denoise_fn(z_t, t, cond) into a guided denoise_fn(z_t, t), one batched call.
  check_interval: validates a guidance interval (t_lo, t_hi).
  guide: the combination v_u + w (v_c - v_u), with optional rescale, on given predictions.
  rescale_guidance: the rescale step alone.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from vidgen.diffusion.objectives import broadcast_per_example

Array = jax.Array
PyTree = Any
CondDenoiseFn = Callable[[Array, Array, PyTree], Array]
DenoiseFn = Callable[[Array, Array], Array]


def rescale_guidance(v_guided: Array, v_cond: Array, phi: float | Array) -> Array:
  """Mixes v_guided with its copy rescaled to the per-example std of v_cond.

  Args:
    v_guided: the guided prediction, [B, ...].
    v_cond: the conditional prediction, [B, ...].
    phi: rescale strength, scalar or [B]; 0 returns v_guided unchanged, ~0.7 is the paper's recommendation.

  Returns:
    float32 [B, ...].
  """
  v_guided = jnp.asarray(v_guided, jnp.float32)
  v_cond = jnp.asarray(v_cond, jnp.float32)
  axes = tuple(range(1, v_guided.ndim))
  std_cond = jnp.std(v_cond, axis=axes, keepdims=True)
  std_guided = jnp.std(v_guided, axis=axes, keepdims=True)
  # A constant guided prediction (std 0) has nothing to rescale; leave it as is rather than divide by zero.
  ratio = jnp.where(std_guided > 0, std_cond / jnp.where(std_guided > 0, std_guided, 1.0), 1.0)
  phi = broadcast_per_example(phi, v_guided)
  return v_guided * (phi * ratio + (1.0 - phi))


def guide(v_cond: Array, v_uncond: Array, scale: float | Array, rescale: float | Array = 0.0) -> Array:
  """v_u + scale (v_c - v_u), then `rescale_guidance` with phi = rescale.

  Args:
    v_cond, v_uncond: [B, ...] predictions with and without the condition.
    scale: guidance weight w, scalar or [B].
    rescale: guidance-rescale phi, scalar or [B]; 0 disables it.

  Returns:
    float32 [B, ...].
  """
  v_cond = jnp.asarray(v_cond, jnp.float32)
  v_uncond = jnp.asarray(v_uncond, jnp.float32)
  v = v_uncond + broadcast_per_example(scale, v_cond) * (v_cond - v_uncond)
  if isinstance(rescale, (int, float)) and rescale == 0:
    return v  # Statically off: skip the two reductions.
  return rescale_guidance(v, v_cond, rescale)


def check_interval(interval, name: str = "interval") -> tuple[float, float]:
  """A guidance interval as (t_lo, t_hi) floats; ValueError naming `name` unless 0 <= t_lo <= t_hi <= 1."""
  try:
    t_lo, t_hi = (float(t) for t in interval)
  except (TypeError, ValueError):
    t_lo, t_hi = 1.0, 0.0  # Not two numbers: refused below.
  if not 0.0 <= t_lo <= t_hi <= 1.0:
    raise ValueError(f"{name}={interval!r}: must be (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1")
  return t_lo, t_hi


def classifier_free_guidance(
    denoise_fn: CondDenoiseFn,
    cond: PyTree,
    uncond: PyTree,
    *,
    scale: float | Array,
    rescale: float | Array = 0.0,
    interval: tuple[float, float] | None = None,
) -> DenoiseFn:
  """Turns a conditional denoiser into a guided one for `vidgen.diffusion.sample`.

  The conditional and unconditional branches run as one call on a doubled batch ([cond; uncond] concatenated on axis
  0), so the model sees a single larger batch instead of two launches.

  Args:
    denoise_fn: (z_t [B, ...], t [B], cond) -> v_hat [B, ...].
    cond: the conditioning, a pytree whose leaves have leading axis B (text embeddings, masks, class ids, ...).
    uncond: the null conditioning, a pytree of the same structure; a leaf with leading axis 1 is broadcast to B
      (e.g. one learned null embedding).
    scale: guidance weight w, scalar or [B].
    rescale: guidance-rescale phi, scalar or [B]; 0 (default) disables it.
    interval: (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1: guide only at those noise levels, w = 1 elsewhere, where a
      batch whose t all lie outside runs the conditional model alone (half the cost). None (default): every t.

  Returns:
    guided_fn: (z_t [B, ...], t [B]) -> v_hat float32 [B, ...].
  """

  def pair(c, u):
    c, u = jnp.asarray(c), jnp.asarray(u)
    if u.shape[:1] == (1,) and c.shape[:1] != (1,):
      u = jnp.broadcast_to(u, c.shape[:1] + u.shape[1:])
    return jnp.concatenate([c, u.astype(c.dtype)], axis=0)

  if interval is not None:
    interval = check_interval(interval)
  both = jax.tree.map(pair, cond, uncond)

  def guided(z_t: Array, t: Array, w: float | Array) -> Array:
    batch = z_t.shape[0]
    v = denoise_fn(jnp.concatenate([z_t, z_t], axis=0), jnp.concatenate([t, t], axis=0), both)
    return guide(v[:batch], v[batch:], w, rescale)

  def guided_fn(z_t: Array, t: Array) -> Array:
    if interval is None:
      return guided(z_t, t, scale)
    inside = (t >= interval[0]) & (t <= interval[1])
    w = jnp.where(inside, jnp.broadcast_to(jnp.asarray(scale, jnp.float32), t.shape), 1.0)
    # Where no example is guided the unconditional half drops out of the result: skip its evaluation.
    return jax.lax.cond(jnp.any(inside), lambda: guided(z_t, t, w),
                        lambda: jnp.asarray(denoise_fn(z_t, t, cond), jnp.float32))

  return guided_fn
