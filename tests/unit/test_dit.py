"""vidgen.models.dit(_config): adaLN-Zero init, training signal, scan/remat parity, locality, configs, sizes."""

from __future__ import annotations

import functools
import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vidgen.config import ConfigError
from vidgen.data.shapes import (
    CLASS_FACTORS,
    COLOR_NAMES,
    DIRECTION_NAMES,
    NUM_CLASSES,
    SHAPES,
    class_attributes,
    class_id,
)
from vidgen.layers.embeddings import LabelEmbedder
from vidgen.models.dit import Conditioning, VideoDiT, drop_conditioning, null_conditioning
from vidgen.models.dit_config import decode_variant, dit_config
from vidgen.scaling import param_count

B = 2


def tiny(**overrides):
  """A small W.A.L.T-style model: 2 x (spatial, spatiotemporal) blocks on a 2x4x4x4 latent."""
  fields = dict(depth=4, width=32, num_heads=2, input_size=(2, 4, 4), in_channels=4, window=(2, 2, 2),
                num_classes=10, text_dim=8, task_channels=2, self_condition=True)
  fields.update(overrides)
  return dit_config("WALT-L", **fields)


_BUILT: dict[str, tuple] = {}


def build(config):
  """A freshly initialised VideoDiT (cached per config; tests must not mutate it).

  Initialised inside one jit: eager init compiles every small op separately, which is slow on CPU.
  """
  key = config.to_json()
  if key not in _BUILT:
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: VideoDiT(config, rngs=nnx.Rngs(0))))
    state = jax.jit(lambda: nnx.split(VideoDiT(config, rngs=nnx.Rngs(0)))[1])()
    _BUILT[key] = (graphdef, state)
  return nnx.merge(*_BUILT[key])


def random_model(config, seed=0):
  """A VideoDiT with random values in every parameter (zero-initialised layers included, so they cannot hide bugs).

  Built abstractly and filled from numpy: no initializer is compiled, which keeps these CPU tests fast.
  """
  model = nnx.eval_shape(lambda: VideoDiT(config, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
  values = []
  for path, leaf in paths_and_leaves:
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    is_scale = "scale" in jax.tree_util.keystr(path)  # qk-norm gains stay near 1.
    values.append(jnp.asarray(1.0 + 0.1 * noise if is_scale else 0.3 * noise, leaf.dtype))
  nnx.update(model, jax.tree.unflatten(treedef, values))
  return model


def with_params(config, model):
  """A model built from `config` carrying the parameters of `model` (same structure)."""
  other = nnx.eval_shape(lambda: VideoDiT(config, rngs=nnx.Rngs(0)))
  nnx.update(other, nnx.state(model, nnx.Param))
  return other


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, params, z, t, cond):
  return nnx.merge(graphdef, params)(z, t, cond)


def pure(model):
  """(jitted apply(params, z, t, cond), params): the pure-function boundary a trainer uses.

  One jitted function with the graphdef static, so tests with the same model structure share a compilation.
  """
  graphdef, params = nnx.split(model)
  return functools.partial(_apply, graphdef), params


def inputs(config, seed=1, frames=None):
  """(z_t, t, cond) for `config`; conditioning fields the model does not take are None."""
  t, h, w = config.input_size
  t = frames or t
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
  z = normal(B, t, h, w, config.in_channels)
  cond = Conditioning(
      labels=jnp.array([3, config.num_classes]) if config.num_classes else None,
      text=normal(B, 3, config.text_dim) if config.text_dim else None,
      text_mask=jnp.array([[True, True, False], [True, False, False]]) if config.text_dim else None,
      task=normal(B, t, h, w, config.task_channels) if config.task_channels else None,
      self_cond=normal(*z.shape) if config.self_condition else None,
  )
  return z, jnp.array([0.25, 0.9]), cond


# Plain DiT blocks (per-block adaLN, no text): the lora=0 case of the init tests and the training test share it.
SMALL = tiny(adaln_lora_rank=0, depth=2, text_dim=0, task_channels=0, self_condition=False)


@pytest.mark.parametrize("config", [SMALL, tiny()], ids=["adaln", "adaln_lora_text_task"])
def test_outputs_exactly_zero_at_init(config):
  model = build(config)
  apply, params = pure(model)
  z, t, cond = inputs(config)
  out = apply(params, z, t, cond)
  assert out.shape == z.shape and out.dtype == z.dtype
  np.testing.assert_array_equal(np.asarray(out), 0.0)


@pytest.mark.parametrize("config", [SMALL, tiny(mlp_conv=3)], ids=["adaln", "adaln_lora_text_conv_mlp"])
def test_every_block_is_identity_at_init(config):
  lora = config.adaln_lora_rank
  model = build(config)
  graphdef, state = nnx.split(model.blocks)
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((B, 32, 32)), jnp.float32)
  # Non-trivial conditioning and context: modulation would be non-zero if any zero-init were missing.
  c_act = jnp.asarray(rng.standard_normal((B, 1, 32)), jnp.float32)  # one clip per row
  shared = model.ada_shared(c_act) if lora else None
  context = jnp.asarray(rng.standard_normal((B, 3, 32)), jnp.float32)
  mask = jnp.array([[True, True, False], [True, False, False]])

  @jax.jit
  def each_block(state, x):
    outs = []
    for i in range(config.depth // len(config.attention_pattern)):
      super_block = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
      outs += [block(x, c_act, shared, (2, 4, 4), context, mask) for block in super_block.layers]
    return jnp.stack(outs)

  outs = each_block(state, x)
  assert outs.shape[0] == config.depth
  for y in outs:
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_loss_falls_on_toy_regression():
  config = SMALL  # Shares the cached build with the init tests.
  model = build(config)
  graphdef, params = nnx.split(model)
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)
  z = jax.random.normal(jax.random.key(5), (8, 2, 4, 4, 4))
  t = jnp.linspace(0.0, 1.0, 8)
  cond = Conditioning(labels=jnp.arange(8) % 10)
  target = -z * (1.0 - t)[:, None, None, None, None]  # A smooth, input-dependent target.

  def loss_fn(params):
    v = nnx.merge(graphdef, params)(z, t, cond)
    return jnp.mean((v - target) ** 2)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(12):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.5 * losses[0], losses


def test_scan_equals_unrolled_and_remat_is_transparent():
  config = tiny(task_channels=0, self_condition=False)
  scanned = random_model(config)
  z, t, cond = inputs(config)
  apply, params = pure(scanned)
  ref = apply(params, z, t, cond)
  assert float(jnp.abs(ref).max()) > 1e-3

  unrolled = with_params(tiny(task_channels=0, self_condition=False, scan_layers=False), scanned)
  apply_u, params_u = pure(unrolled)
  np.testing.assert_allclose(np.asarray(apply_u(params_u, z, t, cond)), np.asarray(ref), rtol=1e-5, atol=1e-5)

  # Remat changes what is stored for the backward pass, never the numbers: compare gradients (one block keeps the
  # three compilations cheap).
  one_block = dict(depth=1, attention_pattern=("spatiotemporal",), task_channels=0, self_condition=False, text_dim=0)
  small = random_model(tiny(**one_block))
  cond = Conditioning(labels=cond.labels)

  def grads_of(policy):
    m = with_params(tiny(remat=policy, **one_block), small)
    graphdef, p = nnx.split(m)
    f = jax.jit(jax.value_and_grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(z, t, cond) ** 2)))
    return f(p)

  loss0, g0 = grads_of("none")
  for policy in ("full", "dots"):
    loss1, g1 = grads_of(policy)
    np.testing.assert_allclose(float(loss1), float(loss0), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max())), g1, g0)


def test_spatial_layers_do_not_mix_frames():
  # Conv MLPs included: their convolution runs within each frame.
  config = tiny(attention_pattern=("spatial",), depth=2, input_size=(3, 4, 4), window=(1, 1, 1), mlp_conv=3)
  model = random_model(config)
  apply, params = pure(model)
  z, t, cond = inputs(config)
  out = apply(params, z, t, cond)
  k = 1
  z2 = z.at[:, k].add(1.0)
  out2 = apply(params, z2, t, cond)
  changed = np.abs(np.asarray(out2 - out)).max(axis=(0, 2, 3, 4))
  assert changed[k] > 1e-3
  np.testing.assert_array_equal(changed[[0, 2]], 0.0)


def test_spatiotemporal_layers_do_mix_frames():
  config = tiny()
  model = random_model(config)
  apply, params = pure(model)
  z, t, cond = inputs(config)
  out = apply(params, z, t, cond)
  out2 = apply(params, z.at[:, 1].add(1.0), t, cond)
  assert float(jnp.abs(out2 - out)[:, 0].max()) > 1e-4


@pytest.mark.parametrize("kind", ["learned", "sincos"])
def test_position_embeddings_interpolate(kind):
  config = tiny(pos_embedding=kind, input_size=(2, 4, 8), window=(2, 2, 2))
  model = random_model(config)
  pos = model.pos_embed
  base = pos((2, 4, 8))
  assert base.shape == (64, 32)
  if kind == "learned":
    expected = pos.time[...][:, None, None, :] + pos.space[...][None]
    np.testing.assert_array_equal(np.asarray(base), np.asarray(expected.reshape(64, 32)))
  # Other grids: an image takes frame 0's time embedding; space is resampled (exact at shared sample points).
  image = pos((1, 4, 8))
  np.testing.assert_allclose(np.asarray(image), np.asarray(base[:32]), rtol=1e-6, atol=1e-6)
  up = pos((4, 8, 16)).reshape(4, 8, 16, 32)
  assert np.all(np.isfinite(np.asarray(up)))
  if kind == "learned":
    # Halving the height samples half-way between row pairs (half-pixel centres): the mean of each pair.
    down = pos((2, 2, 8)).reshape(2, 2, 8, 32)
    space = pos.space[...]
    expected = pos.time[...][:, None, None, :] + 0.5 * (space[0::2] + space[1::2])[None]
    np.testing.assert_allclose(np.asarray(down), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_other_sizes_run_images_through_video_model():
  config = tiny(input_size=(2, 4, 4), window=(2, 2, 2))
  model = random_model(config)
  apply, params = pure(model)
  z, t, cond = inputs(config, frames=1)  # An image through spatiotemporal layers: the window clamps to its frame.
  assert apply(params, z, t, cond).shape == z.shape


def test_missing_conditioning_means_null():
  config = tiny()
  model = random_model(config)
  apply, params = pure(model)
  z, t, cond = inputs(config)
  # No text == an all-padding caption; no labels == the null class; no task/self_cond == zeros.
  bare = Conditioning()
  explicit = Conditioning(
      labels=jnp.full((B,), config.num_classes), text=jnp.ones((B, 3, config.text_dim)),
      text_mask=jnp.zeros((B, 3), bool), task=jnp.zeros_like(cond.task), self_cond=jnp.zeros_like(z))
  np.testing.assert_allclose(np.asarray(apply(params, z, t, bare)), np.asarray(apply(params, z, t, explicit)),
                             rtol=1e-5, atol=1e-5)
  null = null_conditioning(cond, config.num_classes)
  np.testing.assert_array_equal(np.asarray(null.labels), config.num_classes)
  assert not bool(null.text_mask.any())
  drop = jnp.arange(B) % 2 == 0
  dropped = drop_conditioning(cond, drop, config.num_classes)
  np.testing.assert_array_equal(np.asarray(dropped.labels), np.where(drop, config.num_classes, cond.labels))
  want_mask = ~np.asarray(drop)[:, None] & np.asarray(cond.text_mask)
  np.testing.assert_array_equal(np.asarray(dropped.text_mask), want_mask)


def test_bfloat16_compute():
  config = tiny(dtype="bfloat16")
  model = random_model(config)
  apply, params = pure(model)
  z, t, cond = inputs(config)
  out = apply(params, z, t, cond)
  assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))
  ref_model = with_params(tiny(), model)
  apply32, params32 = pure(ref_model)
  ref = apply32(params32, z, t, cond)
  # bf16 rounds to 2^-8 relative; 4 roundings (input, weight, output, residual) x 3 sub-layers x depth, in quadrature.
  tolerance = 2.0 ** -8 * math.sqrt(4 * 3 * config.depth)
  assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < tolerance


def test_every_parameter_has_logical_axes():
  class_model = tiny(text_dim=0, num_classes=NUM_CLASSES, class_factors=CLASS_FACTORS, class_tokens=True)
  for config in (tiny(), class_model):
    model = nnx.eval_shape(lambda: VideoDiT(config, rngs=nnx.Rngs(0)))  # noqa: B023
    params = nnx.state(model, nnx.Param)
    variables = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert variables
    for var in variables:
      names = var.get_metadata().get("out_sharding")
      assert names is not None and len(names) == len(var.shape), (var.shape, names)
  # Stacked blocks carry the "layers" axis first.
  qkv = model.blocks.layers[0].attn.qkv.kernel
  assert qkv.get_metadata()["out_sharding"][0] == "layers"


@pytest.mark.parametrize("variant,expected", [("S/2", 33e6), ("B/2", 130e6), ("L/2", 458e6), ("XL/2", 675e6)])
def test_dit_parameter_counts(variant, expected):
  # The paper's counts include the 1001-entry class table and the learned-sigma head (2 x 4 output channels).
  count = param_count(dit_config(variant, num_classes=1000, out_channels=8))
  assert abs(count - expected) / expected < 0.01, count


@pytest.mark.parametrize("variant,expected", [("WALT-L", 313e6), ("WALT-XL", 460e6)])
def test_walt_parameter_counts(variant, expected):
  count = param_count(dit_config(variant))
  assert abs(count - expected) / expected < 0.02, count


def test_decode_variant():
  assert decode_variant("XL/2")["patch_size"] == (1, 2, 2)
  assert decode_variant("DiT-B/4")["depth"] == 12
  assert decode_variant("L/1x2x2")["patch_size"] == (1, 2, 2)
  walt = decode_variant("WALT-XL")
  assert (walt["depth"], walt["width"], walt["adaln_lora_rank"], walt["qk_norm"]) == (28, 1152, 2, True)
  assert walt["patch_size"] == (1, 1, 1)
  for bad in ("XXL/2", "XL", "XL/2x2", "WALT-S"):
    with pytest.raises(ConfigError, match="variant"):
      decode_variant(bad)


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(num_heads=5), "dit.num_heads"),
        (dict(window=(2, 0, 2)), "dit.window"),
        (dict(patch_size=(1, 3, 3)), "dit.patch_size"),
        (dict(depth=3), "dit.depth"),
        (dict(attention_pattern=("spatial", "global")), "dit.attention_pattern"),
        (dict(remat="some"), "dit.remat"),
        (dict(dtype="float64"), "dit.dtype"),
        (dict(pos_embedding="rotary"), "dit.pos_embedding"),
        (dict(widht=64), "dit.widht"),
        (dict(mlp_conv=2), "dit.mlp_conv"),
        (dict(class_factors=(3, 3)), "dit.class_factors"),
        (dict(num_classes=0, class_factors=(1,)), "dit.class_factors"),
        (dict(class_tokens=True), "dit.class_tokens"),  # tiny() has captions too
    ],
)
def test_config_validation_names_the_field(overrides, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    tiny(**overrides)


def test_runtime_shape_errors():
  config = tiny()
  model = random_model(config)
  z, t, cond = inputs(config)
  with pytest.raises(ValueError, match="z_t"):
    model(z[..., :3], t, cond)
  with pytest.raises(ValueError, match="patch"):
    random_model(tiny(patch_size=(1, 2, 2)))(z[:, :, :3, :3], t)
  with pytest.raises(ValueError, match="task"):
    model(z, t, cond.replace(task=cond.task[..., :1]))


def _experiment(name):
  path = pathlib.Path(__file__).resolve().parents[2] / "experiments" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_dit_imagenet_config():
  exp = _experiment("dit_imagenet")
  config = exp.get_config("variant=XL/2")
  assert (config.dit.depth, config.dit.width, config.dit.patch_size) == (28, 1152, (1, 2, 2))
  assert (config.dit.num_classes, config.dit.input_size, config.dit.in_channels) == (1000, (1, 32, 32), 4)
  assert dict(config.mesh) == dict(data=-1, fsdp=1, tensor=1)
  for field in ("name", "lr", "warmup_steps", "weight_decay", "grad_clip"):
    assert field in config.optimizer
  for field in ("seed", "total_steps", "batch_size", "log_every", "checkpoint_every", "sample_every"):
    assert field in config
  small = exp.get_config("variant=B/4,runlocal")
  assert small.dit.patch_size == (1, 4, 4) and small.dit.width < 128 and small.total_steps <= 100
  assert param_count(small.dit) < 1_000_000
  with pytest.raises(ConfigError, match="variant"):
    exp.get_config("variant=XXL/2")
  with pytest.raises(ConfigError, match="not known"):
    exp.get_config("varaint=XL/2")
  # Data that is not there is refused before anything is built: ImageNet not prepared in TFDS, no folder given.
  from vidgen.train.stages import validate

  full = exp.get_config("variant=B/4")
  full.data.data_dir = "/nonexistent/tensorflow_datasets"
  with pytest.raises(ConfigError, match=r"imagenet2012.*not prepared"):
    validate(full)
  with pytest.raises(ConfigError, match=r"config\.data\.path"):
    validate(small)


def test_pooled_text_conditions_through_adaln_and_ignores_padding():
  """pooled_text adds the mean of the real caption tokens to c: padding tokens (and their values) do not matter, a
  caption changes the output even without cross-attention's help, and the null caption equals no caption."""
  config = tiny(pooled_text=True)
  model = random_model(config)
  apply, params = pure(model)
  z, t, cond = inputs(config)
  text = jax.random.normal(jax.random.key(1), (B, 3, config.text_dim))
  mask = jnp.array([[True, True, False], [True, False, False]])
  base = apply(params, z, t, cond.replace(text=text, text_mask=mask))
  other_padding = text.at[:, 2].set(100.0).at[1, 1].set(-7.0)
  np.testing.assert_allclose(np.asarray(apply(params, z, t, cond.replace(text=other_padding, text_mask=mask))),
                             np.asarray(base), rtol=1e-5, atol=1e-5)
  # Zero the cross-attention output projections: the caption must still reach the output through adaLN.
  no_cross = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if "cross" in jax.tree_util.keystr(p) and "out" in jax.tree_util.keystr(p)
      else x, params)
  a = apply(no_cross, z, t, cond.replace(text=text, text_mask=mask))
  b = apply(no_cross, z, t, cond.replace(text=-text, text_mask=mask))
  assert float(jnp.abs(a - b).max()) > 1e-3
  null = cond.replace(text=text, text_mask=jnp.zeros_like(mask))
  np.testing.assert_allclose(np.asarray(apply(params, z, t, null)), np.asarray(apply(params, z, t, cond.replace(
      text=None, text_mask=None))), rtol=1e-5, atol=1e-5)
  with pytest.raises(ConfigError, match="dit.pooled_text"):
    tiny(pooled_text=True, text_dim=0)


def test_factored_labels_sum_one_row_per_attribute():
  """class_factors reads a shapes class id as (color, shape, direction) digits and sums one row per attribute: the
  embedding of any class, including a combination held out of training, is determined by its attributes' rows."""
  embed = LabelEmbedder(NUM_CLASSES, 8, factors=CLASS_FACTORS, rngs=nnx.Rngs(0))
  assert embed.table.embedding.shape == (sum(f + 1 for f in CLASS_FACTORS), 8)
  ids = np.arange(NUM_CLASSES)
  rows = np.asarray(embed.rows(jnp.asarray(ids)))
  colors, shapes, directions = zip(*(class_attributes(int(i)) for i in ids))
  nc, ns, _ = CLASS_FACTORS
  np.testing.assert_array_equal(rows[:, 0], [COLOR_NAMES.index(c) for c in colors])
  np.testing.assert_array_equal(rows[:, 1], [nc + 1 + SHAPES.index(s) for s in shapes])
  np.testing.assert_array_equal(rows[:, 2], [nc + ns + 2 + DIRECTION_NAMES.index(d) for d in directions])
  # The null label takes every factor's null row.
  np.testing.assert_array_equal(np.asarray(embed.rows(jnp.array([NUM_CLASSES]))), [[nc, nc + ns + 1, nc + ns + 6]])
  e = np.asarray(embed(jnp.asarray(ids)))
  # Additivity: red circle left - red circle right == blue square left - blue square right.
  a = lambda *attrs: e[class_id(*attrs)]  # noqa: E731
  np.testing.assert_allclose(a("red", "circle", "left") - a("red", "circle", "right"),
                             a("blue", "square", "left") - a("blue", "square", "right"), atol=1e-6)
  assert np.abs(a("red", "circle", "left") - a("red", "circle", "right")).max() > 1e-3
  # No factors: one row per class plus the null row, each label its own row.
  plain = LabelEmbedder(NUM_CLASSES, 8, rngs=nnx.Rngs(0))
  assert plain.table.embedding.shape == (NUM_CLASSES + 1, 8)
  labels = jnp.array([0, 5, NUM_CLASSES])
  np.testing.assert_array_equal(np.asarray(plain(labels)), np.asarray(plain.table.embedding[...])[[0, 5, NUM_CLASSES]])
  with pytest.raises(ValueError, match="product"):
    LabelEmbedder(NUM_CLASSES, 8, factors=(7, 3, 3), rngs=nnx.Rngs(0))


def test_factored_label_model_trains_every_class_sharing_an_attribute():
  """Through a whole VideoDiT with class_factors, a batch of one class sends gradient to exactly its color, shape and
  direction rows, so every class sharing one of them learns from it; the plain table trains that class's row only."""
  def rows_with_gradient(factors):
    config = tiny(num_classes=NUM_CLASSES, class_factors=factors)
    model = random_model(config)
    apply, params = pure(model)
    z, t, _ = inputs(config)
    cond = Conditioning(labels=jnp.full((B,), class_id("red", "circle", "left")))
    grads = jax.grad(lambda p: jnp.mean(apply(p, z, t, cond) ** 2))(params)
    return np.flatnonzero(np.abs(np.asarray(grads["label_embed"]["table"]["embedding"][...])).max(-1) > 0)

  np.testing.assert_array_equal(rows_with_gradient(()), [class_id("red", "circle", "left")])
  nc, ns, _ = CLASS_FACTORS
  red, circle, left = 0, nc + 1 + SHAPES.index("circle"), nc + ns + 2 + DIRECTION_NAMES.index("left")
  np.testing.assert_array_equal(rows_with_gradient(CLASS_FACTORS), [red, circle, left])


def test_class_tokens_add_only_a_cross_attention_to_the_label_rows():
  """class_tokens: blocks cross-attend to the label's factor rows. With the cross-attention output projections zeroed
  the model is exactly the one without class_tokens (same weights); with them, two labels with the same summed
  embedding (the same adaLN conditioning) but different rows give different outputs."""
  fields = dict(text_dim=0, num_classes=NUM_CLASSES, class_factors=CLASS_FACTORS)
  config = tiny(class_tokens=True, **fields)
  model = random_model(config)
  apply, params = pure(model)
  z, t, _ = inputs(config)
  label = lambda *attrs: Conditioning(labels=jnp.full((B,), class_id(*attrs)))  # noqa: E731
  is_cross_out = lambda p: "cross" in jax.tree_util.keystr(p) and "out" in jax.tree_util.keystr(p)  # noqa: E731
  no_cross = jax.tree_util.tree_map_with_path(lambda p, x: jnp.zeros_like(x) if is_cross_out(p) else x, params)
  plain = tiny(**fields)
  plain_model = nnx.eval_shape(lambda: VideoDiT(plain, rngs=nnx.Rngs(0)))
  plain_params = nnx.state(plain_model, nnx.Param)
  flat = dict(jax.tree_util.tree_flatten_with_path(no_cross)[0])
  nnx.update(plain_model, jax.tree_util.tree_map_with_path(lambda p, x: flat[p], plain_params))
  plain_apply, plain_state = pure(plain_model)
  cond = label("red", "circle", "left")
  np.testing.assert_allclose(np.asarray(apply(no_cross, z, t, cond)), np.asarray(plain_apply(plain_state, z, t, cond)),
                             rtol=1e-5, atol=1e-5)
  # Two classes with the same summed embedding (the same c) but different rows: red + circle == blue + square.
  # Only the cross path can tell them apart.
  nc = CLASS_FACTORS[0]
  red, blue = COLOR_NAMES.index("red"), COLOR_NAMES.index("blue")
  circle, square = nc + 1 + SHAPES.index("circle"), nc + 1 + SHAPES.index("square")
  rows = np.array(params["label_embed"]["table"]["embedding"][...])
  rows[blue] = rows[red] + 0.5
  rows[square] = rows[circle] - 0.5
  for tree in (params, no_cross):
    tree["label_embed"]["table"]["embedding"][...] = jnp.asarray(rows)
  a, b = label("red", "circle", "left"), label("blue", "square", "left")
  # (Equal up to the rounding of the two sums; outputs here reach ~20.)
  np.testing.assert_allclose(np.asarray(apply(no_cross, z, t, a)), np.asarray(apply(no_cross, z, t, b)),
                             rtol=1e-4, atol=1e-4)
  assert float(jnp.abs(apply(params, z, t, a) - apply(params, z, t, b)).max()) > 0.1
