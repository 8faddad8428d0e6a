"""Tests for vidgen.layers.attention: windowed attention against an independent masked reference, masks, backends."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidgen.layers import attention as attn


# Jitted once per shape: eager mode would compile every primitive separately (slow on a shared CPU).
windowed = jax.jit(attn.windowed_attention, static_argnames=("grid", "window", "backend", "scale"))
full = jax.jit(attn.full_attention, static_argnames=("backend", "scale"))


def _qkv(seed, batch, n, heads=2, dim=8, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  shape = (batch, n, heads, dim)
  return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32).astype(dtype) for _ in range(3))


def _reference(q, k, v, allowed):
  """Plain numpy softmax attention with a boolean `allowed` [B or 1, Nq, Nk] (True = attend)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(allowed[:, None], logits, -np.inf)
  logits -= logits.max(-1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v)


def _window_mask(grid, window):
  """N x N mask from window ids, built independently of the implementation (no rearrange)."""
  wt, wh, ww = (min(w, g) for w, g in zip(window, grid))
  ids = [(t // wt, h // wh, w // ww) for t, h, w in itertools.product(*(range(g) for g in grid))]
  ids = np.array([hash(i) for i in ids])
  return (ids[:, None] == ids[None, :])[None]


@pytest.mark.parametrize(
    "grid,window",
    [
        ((1, 4, 4), (1, 4, 4)),  # An image, spatial window = whole frame.
        ((4, 4, 4), (1, 4, 4)),  # Spatial: one frame per window.
        ((4, 4, 4), (2, 2, 2)),  # Spatiotemporal box.
        ((3, 4, 6), (3, 2, 3)),  # Non-cubic grid and box.
        ((1, 4, 4), (2, 2, 2)),  # T = 1 through a spatiotemporal layer: window clamped to (1, 2, 2).
        ((2, 4, 4), (4, 8, 8)),  # Window larger than the grid everywhere: full attention.
    ],
)
def test_windowed_matches_masked_full_attention(grid, window):
  n = int(np.prod(grid))
  q, k, v = _qkv(0, 2, n)
  out = windowed(q, k, v, grid=grid, window=window)
  ref = _reference(q, k, v, _window_mask(grid, window))
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_spatial_window_is_frame_local():
  grid = (3, 2, 2)
  q, k, v = _qkv(1, 1, 12)
  out = windowed(q, k, v, grid=grid, window=(1, 2, 2))
  # Changing keys/values of frame 2 must leave frames 0 and 1 untouched.
  k2 = k.at[:, 8:].add(1.0)
  v2 = v.at[:, 8:].add(1.0)
  out2 = windowed(q, k2, v2, grid=grid, window=(1, 2, 2))
  np.testing.assert_array_equal(np.asarray(out[:, :8]), np.asarray(out2[:, :8]))
  assert not np.allclose(np.asarray(out[:, 8:]), np.asarray(out2[:, 8:]))


@pytest.mark.parametrize("grid,window", [
    ((4, 4, 4), (3, 2, 2)),  # Time 4 in boxes of 3: a full box and a 1-frame one.
    ((2, 6, 4), (2, 4, 4)),
    ((4, 4, 4), (1, 4, 3)),
    ((3, 5, 7), (2, 2, 3)),  # Partial boxes on every axis.
    ((5, 3, 3), (1, 3, 3)),  # Odd spatial sides, whole frames.
])
def test_windows_that_do_not_tile_the_grid_end_in_partial_windows(grid, window):
  """Forward and gradients equal attention restricted to each token's (possibly partial) box, no padding token seen."""
  n = int(np.prod(grid))
  q, k, v = _qkv(3, 2, n)
  out = windowed(q, k, v, grid=grid, window=window)
  allowed = _window_mask(grid, window)
  np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, allowed), rtol=1e-5, atol=1e-5)
  weights = jnp.asarray(np.random.default_rng(4).standard_normal(q.shape), jnp.float32)

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v) * weights)

  grads = jax.grad(loss(lambda q, k, v: windowed(q, k, v, grid=grid, window=window)), argnums=(0, 1, 2))(q, k, v)
  ref = jax.grad(loss(lambda q, k, v: full(q, k, v, mask=jnp.asarray(allowed)[:, None])), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(grads, ref):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)


def test_wrong_token_count_raises():
  q, k, v = _qkv(0, 1, 10)
  with pytest.raises(ValueError, match="T\\*H\\*W"):
    windowed(q, k, v, grid=(1, 4, 4), window=(1, 2, 2))


def test_key_padding_mask():
  q, _, _ = _qkv(2, 2, 5)
  _, k, v = _qkv(3, 2, 7)
  mask = jnp.array([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]], bool)
  out = full(q, k, v, mask=mask)
  ref = _reference(q, k, v, np.asarray(mask)[:, None, :].repeat(5, 1))
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
  # Padded keys/values have no influence at all.
  noise = jnp.where(mask[:, :, None, None], 0.0, 100.0)
  out2 = full(q, k + noise, v + noise, mask=mask)
  np.testing.assert_allclose(np.asarray(out), np.asarray(out2), rtol=1e-6, atol=1e-6)


def test_fully_masked_rows_give_zeros_and_finite_grads():
  q, k, v = _qkv(4, 2, 3)
  mask = jnp.array([[True, False, True], [False, False, False]])
  out = full(q, k, v, mask=mask)
  np.testing.assert_array_equal(np.asarray(out[1]), 0.0)
  assert np.all(np.isfinite(np.asarray(out)))
  grads = jax.grad(lambda q, k, v: full(q, k, v, mask=mask).sum(), argnums=(0, 1, 2))(q, k, v)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_full_4d_mask():
  q, k, v = _qkv(5, 1, 6)
  causal = jnp.tril(jnp.ones((6, 6), bool))[None, None]
  out = full(q, k, v, mask=causal)
  ref = _reference(q, k, v, np.asarray(causal[:, 0]))
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_logit_bias_shapes_and_backends():
  q, k, v = _qkv(7, 2, 5)
  bias = jnp.asarray(np.random.default_rng(7).standard_normal((2, 5, 5)), jnp.float32)  # [heads, Nq, Nk]
  # A bias that is the same for every key is a no-op under softmax; a per-key one changes the output.
  np.testing.assert_allclose(full(q, k, v, bias=jnp.broadcast_to(bias[..., :1], bias.shape)), full(q, k, v),
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(full(q, k, v, bias=bias), full(q, k, v), atol=1e-3)
  with pytest.raises(ValueError, match="bias must be broadcastable"):
    full(q, k, v, bias=jnp.zeros((5,)))
  with pytest.raises(ValueError, match="splash backend takes no logit bias"):
    full(q, k, v, bias=bias, backend="splash")


def test_bfloat16_inputs_use_float32_softmax():
  q, k, v = _qkv(6, 1, 16, dtype=jnp.bfloat16)
  out = windowed(q, k, v, grid=(1, 4, 4), window=(1, 2, 2))
  assert out.dtype == jnp.bfloat16
  ref = _reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                   _window_mask((1, 4, 4), (1, 2, 2)))
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2)


def test_backend_dispatch_on_cpu():
  assert attn.resolve_backend("auto", jnp.bfloat16, 64) == "xla"  # This test machine has no GPU/TPU.
  assert attn.resolve_backend("xla") == "xla"
  with pytest.raises(ValueError, match="not known"):
    attn.resolve_backend("flash")
  q, k, v = _qkv(0, 1, 4)
  with pytest.raises(ValueError, match="TPU"):
    full(q, k, v, backend="splash")
  with pytest.raises(ValueError, match="bfloat16"):
    full(q, k, v, backend="cudnn")  # float32 inputs are refused before reaching cuDNN.
  out_auto = full(q, k, v, backend="auto")
  np.testing.assert_array_equal(np.asarray(out_auto), np.asarray(full(q, k, v)))


def test_self_attention_module_kinds():
  grid = (2, 4, 4)
  x = jnp.asarray(np.random.default_rng(7).standard_normal((1, 32, 16)), jnp.float32)
  spatial = attn.SelfAttention(16, 2, kind="spatial", qk_norm=True, rngs=nnx.Rngs(0))
  assert spatial.window_for(grid) == (1, 4, 4)
  st = attn.SelfAttention(16, 2, kind="spatiotemporal", window=(4, 2, 2), rngs=nnx.Rngs(0))
  assert st.window_for(grid) == (2, 2, 2)  # Clamped along time.
  full_layer = attn.SelfAttention(16, 2, kind="full", rngs=nnx.Rngs(0))
  assert full_layer.window_for(grid) is None
  with pytest.raises(ValueError, match="window"):
    attn.SelfAttention(16, 2, kind="spatiotemporal", rngs=nnx.Rngs(0))
  for layer in (st, full_layer):
    graphdef, state = nnx.split(layer)
    assert jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, grid))(state, x).shape == x.shape
  # Spatial layer: frame 1 inputs cannot affect frame 0 outputs.
  graphdef, state = nnx.split(spatial)
  apply = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, grid))
  y1, y2 = apply(state, x), apply(state, x.at[:, 16:].add(1.0))
  np.testing.assert_array_equal(np.asarray(y1[:, :16]), np.asarray(y2[:, :16]))
  assert not np.allclose(np.asarray(y1[:, 16:]), np.asarray(y2[:, 16:]))


def test_cross_attention_module_zero_init_and_mask():
  rng = np.random.default_rng(8)
  layer = attn.CrossAttention(16, 2, context_dim=8, rngs=nnx.Rngs(0))
  x = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
  ctx = jnp.asarray(rng.standard_normal((2, 3, 8)), jnp.float32)
  mask = jnp.array([[True, True, False], [True, False, False]])
  graphdef, state = nnx.split(layer)
  apply = jax.jit(lambda s, x, c, m: nnx.merge(graphdef, s)(x, c, m))
  np.testing.assert_array_equal(np.asarray(apply(state, x, ctx, mask)), 0.0)  # Zero-initialised output projection.
  layer.out.kernel[...] = jnp.asarray(rng.standard_normal(layer.out.kernel[...].shape), jnp.float32)
  state = nnx.state(layer)
  y1 = apply(state, x, ctx, mask)
  y2 = apply(state, x, ctx.at[:, 2].add(5.0), mask)  # Only padded context changed.
  np.testing.assert_allclose(np.asarray(y1), np.asarray(y2), rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(y1).max()) > 1e-3


def test_splash_wrapper_in_pallas_interpreter():
  # The TPU kernel itself cannot run here, but the Pallas interpreter runs it on CPU: this checks the wrapper's
  # padding (20 -> 128 queries, 7 -> 128 keys, head dim 8 -> 128), segment ids, scaling and layout, forward and
  # backward, including an example whose keys are all masked.
  rng = np.random.default_rng(11)
  q = jnp.asarray(rng.standard_normal((2, 20, 2, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((2, 7, 2, 8)), jnp.float32) for _ in range(2))
  mask = jnp.array([[1, 0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]], bool)
  scale = 0.3

  def splash_loss(q, k, v):
    out = attn._splash_attention(q, k, v, mask, scale, interpret=True)  # pylint: disable=protected-access
    return jnp.sum(jnp.where(jnp.any(mask, 1)[:, None, None, None], out, 0.0) ** 2), out

  def xla_loss(q, k, v):
    out = full(q, k, v, mask=mask, scale=scale)
    return jnp.sum(out ** 2), out

  (_, out), grads = jax.value_and_grad(splash_loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  (_, ref), ref_grads = jax.value_and_grad(xla_loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  assert np.all(np.isfinite(np.asarray(out)))
  np.testing.assert_allclose(np.asarray(out[0]), np.asarray(ref[0]), rtol=1e-5, atol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5)
