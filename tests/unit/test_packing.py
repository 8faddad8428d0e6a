"""Patch n' Pack: packed rows of clips of any size give exactly what each clip gives alone (forward and gradients),
and the host-side packer places, pads and takes clips back apart correctly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidgen.data.packing import block_shapes, pack, plan
from vidgen.layers.embeddings import SpacetimePosEmbed, apply_rope, rope_angles, token_grid
from vidgen.layers.layout import grid_positions, window_gather
from vidgen.models.dit import Conditioning, VideoDiT
from vidgen.models.dit_config import dit_config

C = 4


def random_model(config, seed=0):
  """Every parameter random (zero-initialised layers included, so none can hide a packing bug)."""
  model = nnx.eval_shape(lambda: VideoDiT(config, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  values = []
  for path, leaf in leaves:
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    scale = "scale" in jax.tree_util.keystr(path)
    values.append(jnp.asarray(1.0 + 0.1 * noise if scale else 0.2 * noise, leaf.dtype))
  nnx.update(model, jax.tree.unflatten(treedef, values))
  return model


CONFIGS = {
    # W.A.L.T style: spatial + spatiotemporal windows (partial ones too), captions, task and self-conditioning inputs.
    "walt_text": dict(input_size=(2, 4, 4), patch_size=(1, 2, 2), window=(2, 2, 2), text_dim=8, task_channels=2,
                      self_condition=True, pos_embedding="learned"),
    # Class-conditional, full attention, sin-cos positions, the label's rows as cross-attention tokens.
    "classes_full": dict(input_size=(1, 8, 8), patch_size=(1, 2, 2), attention_pattern=("full",), depth=2,
                         num_classes=6, class_factors=(2, 3), class_tokens=True, pos_embedding="sincos",
                         adaln_lora_rank=0),
    # Rotary positions, a pooled caption in adaLN, windows of 3 frames and patch 1.
    "rope_pooled": dict(input_size=(3, 4, 4), window=(3, 2, 3), text_dim=8, pooled_text=True, pos_embedding="rope"),
}

# Latent sizes (T, H, W): videos of several durations and aspect ratios, and images (1 frame).
SIZES = [(3, 4, 6), (1, 4, 4), (2, 6, 4), (5, 2, 2), (1, 2, 8), (2, 4, 4)]


def _config(name):
  fields = dict(depth=4, width=36, num_heads=2, in_channels=C, qk_norm=True)
  fields.update(CONFIGS[name])
  return dit_config("WALT-L", **fields)


def _inputs(spec, rng):
  n = len(SIZES)
  latents = [rng.standard_normal((*s, C)).astype(np.float32) for s in SIZES]
  cond = {}
  if spec.num_classes:
    cond["labels"] = rng.integers(0, spec.num_classes + 1, n).astype(np.int32)  # the null class included
  if spec.text_dim:
    cond["text"] = rng.standard_normal((n, 3, spec.text_dim)).astype(np.float32)
    cond["text_mask"] = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], bool)
  if spec.task_channels:
    cond["task"] = [rng.standard_normal((*s, spec.task_channels)).astype(np.float32) for s in SIZES]
  if spec.self_condition:
    cond["self_cond"] = [rng.standard_normal((*s, C)).astype(np.float32) for s in SIZES]
  return latents, rng.uniform(0, 1, n).astype(np.float32), cond


@pytest.mark.parametrize("gathered", [False, True], ids=["masked", "window_blocks"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_packed_rows_equal_each_clip_alone(name, gathered):
  """Forward and gradients, with attention as a mask over each row or on window blocks (`pack(blocks=...)`)."""
  config = _config(name)
  model = random_model(config)
  graphdef, params = nnx.split(model)
  spec = model.spec
  rng = np.random.default_rng(1)
  latents, t, cond = _inputs(spec, rng)
  patch = spec.patch_size
  tokens = [int(np.prod(s)) // int(np.prod(patch)) for s in SIZES]
  # Rows sized so that the first row is filled exactly by the largest clips and another has padding.
  row_length = tokens[0] + tokens[2]
  blocks = None
  if gathered:
    blocks = block_shapes(spec.packed_windows, [token_grid(s, patch) for s in SIZES], row_length)
  batch = pack(latents, patch=patch, row_length=row_length, slots=4, blocks=blocks)
  assert (batch.layout.gathers is not None) == gathered
  assert batch.rows >= 2 and 0.5 < batch.token_efficiency() < 1.0
  assert any(int(np.sum(batch.layout.segment_ids[r] > 0)) == batch.row_length for r in range(batch.rows))
  packed_cond = Conditioning(
      labels=None if "labels" not in cond else jnp.asarray(batch.per_clip(cond["labels"], fill=spec.num_classes)),
      text=None if "text" not in cond else jnp.asarray(batch.per_clip(cond["text"])),
      text_mask=None if "text_mask" not in cond else jnp.asarray(batch.per_clip(cond["text_mask"])),
      task=None if "task" not in cond else jnp.asarray(batch.pack_like(cond["task"])),
      self_cond=None if "self_cond" not in cond else jnp.asarray(batch.pack_like(cond["self_cond"])))
  layout = jax.tree.map(jnp.asarray, batch.layout)
  out_weights = [rng.standard_normal((*s, spec.out_channels)).astype(np.float32) for s in SIZES]
  packed_weights = jnp.asarray(batch.pack_like(out_weights))

  @jax.jit
  def packed(params):
    out = nnx.merge(graphdef, params).packed(jnp.asarray(batch.patches), jnp.asarray(batch.per_clip(t)), layout,
                                             packed_cond)
    return jnp.sum(out * packed_weights), out

  def alone(i):
    def one(params):
      c = Conditioning(**{k: jnp.asarray(v[i])[None] for k, v in cond.items()})
      out = nnx.merge(graphdef, params)(jnp.asarray(latents[i])[None], jnp.asarray(t[i])[None], c)[0]
      return jnp.sum(out * out_weights[i]), out
    return jax.jit(jax.value_and_grad(one, has_aux=True))(params)

  (_, out), grads = jax.value_and_grad(packed, has_aux=True)(params)
  clips = batch.unpack(out)
  total = None
  for i in range(len(SIZES)):
    (_, ref), g = alone(i)
    np.testing.assert_allclose(clips[i], np.asarray(ref), rtol=1e-5, atol=1e-5, err_msg=f"clip {i} {SIZES[i]}")
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  # Gradients are sums over every token of every clip (magnitudes up to ~1e2 here): compared relative to each
  # parameter's largest gradient, since the packed and per-clip programs add the same terms in different orders.
  for (path, g), r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(total)):
    g, r = np.asarray(g), np.asarray(r)
    assert np.abs(g - r).max() <= 1e-5 * max(np.abs(r).max(), 1.0), jax.tree_util.keystr(path)


def test_padding_and_other_clips_do_not_reach_a_clip():
  """Changing one clip's latents (or the padding) leaves every other clip's output bit for bit."""
  config = _config("walt_text")
  model = random_model(config, seed=3)
  rng = np.random.default_rng(2)
  latents, t, _ = _inputs(model.spec, rng)
  batch = pack(latents, patch=model.spec.patch_size, row_length=64)
  layout = jax.tree.map(jnp.asarray, batch.layout)
  run = jax.jit(lambda p: model.packed(p, jnp.asarray(batch.per_clip(t)), layout))
  base = batch.unpack(run(jnp.asarray(batch.patches)))
  changed = batch.patches.copy()
  p0 = batch.placements[0]
  changed[p0.row, p0.start:p0.start + p0.length] += 1.0
  changed[np.asarray(batch.layout.segment_ids) == 0] = 7.0
  other = batch.unpack(run(jnp.asarray(changed)))
  assert not np.allclose(other[0], base[0])
  for i in range(1, len(SIZES)):
    np.testing.assert_array_equal(other[i], base[i])


def test_plan_fills_rows_first_fit_and_refuses_what_does_not_fit():
  grids = [(1, 2, 2), (2, 2, 2), (1, 1, 4), (3, 2, 2), (1, 1, 1)]  # 4, 8, 4, 12, 1 tokens
  placed = plan(grids, 12)
  assert [(p.row, p.start) for p in placed] == [(1, 8), (1, 0), (2, 0), (0, 0), (2, 4)]
  with pytest.raises(ValueError, match="clip 3 has 12 tokens"):
    plan(grids, 11)
  with pytest.raises(ValueError, match="do not fit 2 rows"):
    plan(grids, 12, rows=2)
  assert max(p.slot for p in plan(grids, 100, slots=2)) == 1
  with pytest.raises(ValueError, match=r"clip 1: patch size \(1, 2, 2\) does not divide"):
    pack([np.zeros((1, 4, 4, 2)), np.zeros((1, 3, 4, 2))], patch=(1, 2, 2), row_length=16)


def test_pack_and_unpack_round_trip():
  rng = np.random.default_rng(0)
  clips = [rng.standard_normal((*s, 3)).astype(np.float32) for s in SIZES]
  batch = pack(clips, patch=(1, 2, 2), row_length=20, rows=3, slots=3)
  assert batch.patches.shape == (3, 20, 4, 3) and batch.slots == 3
  for a, b in zip(batch.unpack(batch.patches), clips):
    np.testing.assert_array_equal(a, b)
  assert batch.token_efficiency() == pytest.approx(sum(int(np.prod(s)) // 4 for s in SIZES) / 60)


@pytest.mark.parametrize("kind", ["learned", "sincos"])
def test_per_token_positions_equal_the_grid_positions(kind):
  embed = SpacetimePosEmbed((3, 4, 6), 16, kind=kind, rngs=nnx.Rngs(0))
  for grid in [(3, 4, 6), (1, 4, 6), (5, 2, 9), (2, 7, 3)]:
    positions = grid_positions(grid)
    per_token = embed.at(positions, np.broadcast_to(np.asarray(grid), positions.shape))
    t, h, w = grid
    reference = _separable_reference(embed, grid) if kind == "learned" else None
    if reference is not None:
      np.testing.assert_allclose(np.asarray(per_token), reference, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(per_token), np.asarray(embed(grid)), rtol=1e-6, atol=1e-6)
    assert per_token.shape == (t * h * w, 16)


def _separable_reference(embed, grid):
  """Learned tables resampled axis by axis with numpy's interp (half-pixel centres; time keeps indices up to T0)."""
  t0, h0, w0 = embed.grid
  t, h, w = grid
  time, space = np.asarray(embed.time[...]), np.asarray(embed.space[...])

  def coords(n, base, keep_short=False):
    i = np.arange(n, dtype=np.float64)
    return i if n == base or (keep_short and n <= base) else np.clip((i + 0.5) * base / n - 0.5, 0, base - 1)

  def resample(table, at, axis):
    return np.apply_along_axis(lambda v: np.interp(at, np.arange(table.shape[axis]), v), axis, table)

  time = resample(time, coords(t, t0, keep_short=True), 0)
  space = resample(resample(space, coords(h, h0), 0), coords(w, w0), 1)
  return (time[:, None, None] + space[None]).reshape(t * h * w, -1)


def test_rotary_attention_logits_depend_only_on_offsets():
  rng = np.random.default_rng(0)
  head_dim = 12
  q = jnp.asarray(rng.standard_normal((1, 1, 1, head_dim)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 1, head_dim)), jnp.float32)

  def logit(pq, pk):
    rq = apply_rope(q, rope_angles(jnp.asarray([[pq]]), head_dim))
    rk = apply_rope(k, rope_angles(jnp.asarray([[pk]]), head_dim))
    return float(jnp.sum(rq * rk))

  base = logit((1, 2, 3), (0, 5, 1))
  assert logit((4, 9, 7), (3, 12, 5)) == pytest.approx(base, rel=1e-5, abs=1e-5)  # shifted by (3, 7, 4)
  for offset in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:  # every axis moves the logit
    assert abs(logit((1, 2, 3), tuple(a + b for a, b in zip((0, 5, 1), offset))) - base) > 1e-3
  assert float(jnp.sum(q * k)) == pytest.approx(logit((2, 2, 2), (2, 2, 2)), rel=1e-5)


def test_window_blocks_list_each_window_once_and_refuse_what_does_not_fit():
  grids = [(3, 4, 6), (1, 4, 4)]
  latents = [np.zeros((*g, 1), np.float32) for g in grids]
  batch = pack(latents, patch=(1, 1, 1), row_length=100, slots=2)
  seg, pos = batch.layout.segment_ids, batch.layout.positions
  windows, size = block_shapes({"st": (2, 3, 4)}, grids, 100)["st"][1:]
  gather = window_gather(seg, pos, (2, 3, 4), windows=windows, window_size=size)
  tokens, valid = gather.tokens[0], gather.valid[0]
  real = tokens[valid]
  assert sorted(real.tolist()) == list(range(88))  # every real token exactly once; padding (88..99) nowhere
  np.testing.assert_array_equal(tokens.reshape(-1)[gather.slot[0, :88]], np.arange(88))  # slot inverts tokens
  for w in range(windows):  # one clip and one window per block
    members = tokens[w][valid[w]]
    if len(members):
      assert len(set(seg[0, members])) == 1
      assert len({tuple(p) for p in pos[0, members] // np.array([2, 3, 4])}) == 1
  # clip 0 (3x4x6) has 2 x 2 x 2 windows, clip 1 (1x4x4) 1 x 2 x 1: 10 windows.
  assert int(valid.any(axis=1).sum()) == 10
  fitted = window_gather(seg, pos, (2, 3, 4), windows=None, window_size=size)  # as many as needed: 10 -> 16
  assert fitted.tokens.shape == (1, 16, size)
  np.testing.assert_array_equal(fitted.tokens[:, :10], gather.tokens[:, :10])
  capped = window_gather(seg, pos, (2, 3, 4), windows=None, window_size=size, max_windows=12)
  assert capped.tokens.shape == (1, 12, size) and capped.valid.sum() == 88
  with pytest.raises(ValueError, match="row 0 has 10 windows"):
    window_gather(seg, pos, (2, 3, 4), windows=9, window_size=size)
  with pytest.raises(ValueError, match="of up to 24 tokens"):
    window_gather(seg, pos, (2, 3, 4), windows=windows, window_size=8)
