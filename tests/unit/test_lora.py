"""LoRA mechanics (vidgen.models.lora, vidgen.train.lora_trainer): targets, init, merge against an unmerged reference
built from `flax.nnx.LoRA`, parameter counts, adapter shardings on a fake 8-device mesh, and config refusals."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import cli_runs
from vidgen.config import ConfigError
from vidgen.errors import RunNotFoundError
from vidgen.models import lora
from vidgen.models.dit import Conditioning, VideoDiT
from vidgen.models.dit_config import dit_config

B = 2


def tiny(**overrides):
  """Two (spatial, spatiotemporal) super-blocks with cross-attention on a 2x4x4x4 latent."""
  fields = dict(depth=4, width=32, num_heads=2, input_size=(2, 4, 4), in_channels=4, window=(2, 2, 2), text_dim=8,
                pooled_text=True, qk_norm=True, scan_layers=True, adaln_lora_rank=0)
  fields.update(overrides)
  return dit_config("WALT-L", **fields)


def random_params(model, seed=0) -> dict:
  """Random values for every parameter (zero-initialised ones included, so nothing can hide behind a zero)."""
  params = nnx.split(model, nnx.Param)[1].to_pure_dict()
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype), params)


def random_adapters(targets, rank, seed=1) -> dict:
  """Adapters with lora_b != 0 (fresh ones have lora_b = 0, which would make every adapted model the base)."""
  adapters = lora.init_adapters(jax.random.key(seed), targets, rank)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), adapters)


def inputs(config, seed=0):
  rng = np.random.default_rng(seed)
  z = jnp.asarray(rng.standard_normal((B, *config.input_size, config.in_channels)), jnp.float32)
  t = jnp.asarray([0.3, 0.8], jnp.float32)
  text = jnp.asarray(rng.standard_normal((B, 3, config.text_dim)), jnp.float32)
  mask = jnp.asarray([[True, True, False], [True, True, True]])
  return z, t, Conditioning(text=text, text_mask=mask)


def abstract_model(config):
  return nnx.eval_shape(lambda: VideoDiT(config, rngs=nnx.Rngs(0)))


def test_targets_follow_the_groups_and_the_kernels_axes():
  params = nnx.split(abstract_model(tiny()), nnx.Param)[1]
  every = lora.select_targets(params, lora.TARGET_GROUPS)
  names = {"/".join(str(k) for k in path) for path in every}
  per_block = {"attn/qkv", "attn/out", "cross/q", "cross/kv", "cross/out", "mlp/fc1", "mlp/fc2", "ada"}
  expected = {f"blocks/layers/{i}/{name}/kernel" for i in range(2) for name in per_block} | {"final/ada/kernel"}
  assert names == expected
  by_name = {"/".join(str(k) for k in path): t for path, t in every.items()}
  qkv, out, final = by_name["blocks/layers/0/attn/qkv/kernel"], by_name["blocks/layers/0/attn/out/kernel"], \
      by_name["final/ada/kernel"]
  assert (qkv.leading, qkv.in_shape, qkv.out_shape) == (1, (32,), (3, 2, 16))  # stacked layers, embed -> 3 x heads x kv
  assert (out.leading, out.in_shape, out.out_shape) == (1, (2, 16), (32,))  # heads x kv -> embed
  assert (final.leading, final.in_shape, final.out_shape) == (0, (32,), (64,))
  assert {t.group for t in lora.select_targets(params, ("mlp",)).values()} == {"mlp"}
  assert len(lora.select_targets(params, ("attention",))) == 2 * 5
  assert len(lora.select_targets(params, ("adaln",))) == 2 + 1
  # AdaLN-LoRA (W.A.L.T): the shared modulation and each block's down / up matrices are the adaLN group.
  walt = nnx.split(abstract_model(tiny(adaln_lora_rank=4)), nnx.Param)[1]
  adaln = {"/".join(str(k) for k in path) for path in lora.select_targets(walt, ("adaln",))}
  assert adaln == {"ada_shared/kernel", "final/ada/kernel"} | {f"blocks/layers/{i}/ada_{w}" for i in range(2)
                                                                for w in ("down", "up")}
  with pytest.raises(ValueError, match="unknown target groups"):
    lora.select_targets(params, ("attention", "norms"))
  with pytest.raises(ValueError, match="repeat"):
    lora.select_targets(params, ("mlp", "mlp"))
  with pytest.raises(ValueError, match="at least one"):
    lora.select_targets(params, ())
  no_text = nnx.split(abstract_model(tiny(text_dim=0, pooled_text=False, depth=2, num_classes=5)), nnx.Param)[1]
  assert not any("cross" in str(p) for p in lora.select_targets(no_text, ("attention",)))


def test_fresh_adapters_leave_the_model_unchanged_and_count_their_parameters():
  config = tiny()
  model = abstract_model(config)
  graph, state = nnx.split(model, nnx.Param)
  params = random_params(model)
  targets = lora.select_targets(state, lora.TARGET_GROUPS)
  rank = 3
  adapters = lora.init_adapters(jax.random.key(0), targets, rank)
  adapted = lora.apply_adapters(params, adapters, scale=2.0)
  jax.tree.map(np.testing.assert_array_equal, adapted, params)  # lora_b = 0: W + 0 exactly
  for path, adapter in lora.adapter_items(adapters):
    a, b = adapter["lora_a"], adapter["lora_b"]
    assert not np.any(np.asarray(b)) and np.std(np.asarray(a)) > 0
    # He-uniform over the kernel's fan-in, per stacked layer: bound sqrt(6 / fan_in).
    fan_in = math.prod(targets[path].in_shape)
    assert np.max(np.abs(np.asarray(a))) <= math.sqrt(6.0 / fan_in) + 1e-6
  expected = sum(math.prod(t.shape[:t.leading]) * rank * (math.prod(t.in_shape) + math.prod(t.out_shape))
                 for t in targets.values())
  assert lora.count_params(adapters) == expected
  assert expected < 0.25 * lora.count_params(params)
  z, t, cond = inputs(config)
  np.testing.assert_array_equal(nnx.merge(graph, adapted)(z, t, cond), nnx.merge(graph, params)(z, t, cond))


class Unmerged(nnx.Module):
  """`base(x) + scale * x A B`, the adapter applied to the activations (never merged), through `flax.nnx.LoRA` on the
  flattened input and output axes: the reference the merged weights are checked against."""

  def __init__(self, base: nnx.Module, a: jax.Array, b: jax.Array, scale: float, inputs: int):
    lead = a.ndim - 1 - inputs
    self.inputs, self.scale = inputs, scale
    self.base = base
    in_features, out_features = math.prod(a.shape[lead:-1]), math.prod(b.shape[lead + 1:])
    self.lora = nnx.LoRA(in_features, a.shape[-1], out_features, rngs=nnx.Rngs(0))
    self.lora.lora_a = nnx.LoRAParam(a.reshape(*a.shape[:lead], in_features, a.shape[-1]))
    self.lora.lora_b = nnx.LoRAParam(b.reshape(*b.shape[:lead], b.shape[lead], out_features))

  def __call__(self, x):
    y = self.base(x)
    flat = x.reshape(*x.shape[:x.ndim - self.inputs], -1)
    return y + self.scale * self.lora(flat).reshape(y.shape)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_merged_weights_match_the_unmerged_adapters(scan_layers):
  config = tiny(scan_layers=scan_layers)
  model = abstract_model(config)
  graph, state = nnx.split(model, nnx.Param)
  params = random_params(model)
  targets = lora.select_targets(state, lora.TARGET_GROUPS)
  adapters = random_adapters(targets, rank=4)
  scale = 0.75
  z, t, cond = inputs(config)
  merged = nnx.merge(graph, lora.apply_adapters(params, adapters, scale))(z, t, cond)

  reference = nnx.merge(graph, params)
  for path, adapter in lora.adapter_items(adapters):
    parent = reference
    for key in path[:-2]:
      parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    setattr(parent, path[-2], Unmerged(getattr(parent, path[-2]), adapter["lora_a"], adapter["lora_b"], scale,
                                       targets[path].inputs))
  unmerged = reference(z, t, cond)
  base = nnx.merge(graph, params)(z, t, cond)
  assert float(jnp.max(jnp.abs(unmerged - base))) > 0.1  # the adapters change the output a lot
  np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_merge_of_several_adapters_adds_their_weighted_deltas():
  model = abstract_model(tiny(depth=2))
  state = nnx.split(model, nnx.Param)[1]
  params = random_params(model)
  targets = lora.select_targets(state, ("mlp",))
  first, second = random_adapters(targets, 2, seed=1), random_adapters(targets, 5, seed=2)
  both = lora.merge(params, [(first, 0.5), (second, -1.5)])
  for path, adapter in lora.adapter_items(first):
    other = dict(lora.adapter_items(second))[path]
    kernel = params
    for key in path:
      kernel = kernel[key]
    expected = (np.asarray(kernel, np.float64)
                + 0.5 * np.einsum("lir,lro->lio", np.asarray(adapter["lora_a"], np.float64),
                                  np.asarray(adapter["lora_b"], np.float64))
                - 1.5 * np.einsum("lir,lro->lio", np.asarray(other["lora_a"], np.float64),
                                  np.asarray(other["lora_b"], np.float64)))
    got = both
    for key in path:
      got = got[key]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  untouched = params["blocks"]["layers"][0]["attn"]["qkv"]["kernel"]
  assert both["blocks"]["layers"][0]["attn"]["qkv"]["kernel"] is untouched
  with pytest.raises(ValueError, match="no kernel"):
    lora.apply_adapters({"other": {}}, first, 1.0)


def test_adapter_shardings_follow_their_kernels_on_a_fake_mesh():
  code = """
import jax, numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P
from vidgen.checkpoint import abstract_like
from vidgen.models import lora
from vidgen.models.dit import VideoDiT
from vidgen.models.dit_config import dit_config
from vidgen.parallel import DEFAULT_RULES, make_mesh, state_shardings
assert jax.device_count() == 8
mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
config = dit_config("WALT-L", depth=4, width=32, num_heads=2, input_size=(2, 4, 4), in_channels=4, window=(2, 2, 2),
                    text_dim=8, pooled_text=True, adaln_lora_rank=0)
state = nnx.split(nnx.eval_shape(lambda: VideoDiT(config, rngs=nnx.Rngs(0))), nnx.Param)[1]
kernels = abstract_like(state.to_pure_dict(), state_shardings(state, DEFAULT_RULES, mesh).to_pure_dict())
targets = lora.select_targets(state, lora.TARGET_GROUPS)
adapters = lora.init_adapters(jax.random.key(0), targets, 4)
shardings = lora.adapter_shardings(adapters, kernels)
specs = {}
for path, s in lora.adapter_items(shardings):
  t = targets[path]
  kernel = kernels
  for k in path:
    kernel = kernel[k]
  spec = tuple(kernel.sharding.spec)
  a, b = tuple(s["lora_a"].spec), tuple(s["lora_b"].spec)
  assert a == spec[:t.leading + t.inputs] + (None,), (path, spec, a)
  assert b == spec[:t.leading] + (None,) + spec[t.leading + t.inputs:], (path, spec, b)
  specs["/".join(map(str, path[-4:-1]))] = (spec, a, b)
# The rules put embed on fsdp and heads / mlp on tensor: the adapters of these kernels are really split.
assert specs["0/attn/qkv"] == ((None, "fsdp", None, "tensor", None), (None, "fsdp", None),
                               (None, None, None, "tensor", None))
assert specs["0/attn/out"] == ((None, "tensor", None, "fsdp"), (None, "tensor", None, None), (None, None, "fsdp"))
assert specs["0/mlp/fc1"] == ((None, "fsdp", "tensor"), (None, "fsdp", None), (None, None, "tensor"))
placed = jax.jit(lambda k: lora.init_adapters(k, targets, 4), out_shardings=shardings)(jax.random.key(0))
a = placed["blocks"]["layers"][0]["mlp"]["fc1"]["kernel"]["lora_a"]
assert a.sharding.spec == P(None, "fsdp", None) and len(a.addressable_shards) == 8
assert a.shape == (2, 32, 4) and a.addressable_shards[0].data.shape == (2, 16, 4)
# Merging on the mesh keeps the kernels' shardings.
params = jax.tree.map(lambda x: jax.numpy.zeros(x.shape, x.dtype, device=x.sharding), kernels)
merged = jax.jit(lambda p, a: lora.apply_adapters(p, a, 1.0))(params, placed)
w = merged["blocks"]["layers"][0]["mlp"]["fc1"]["kernel"]
assert w.sharding.is_equivalent_to(kernels["blocks"]["layers"][0]["mlp"]["fc1"]["kernel"].sharding, 3), w.sharding
print("OK")
"""
  done = cli_runs.python(code, devices=8, timeout=300)
  assert done.returncode == 0 and "OK" in done.stdout, done.stdout[-3000:]


def lora_config(**lora_fields) -> ml_collections.ConfigDict:
  """A resolved-looking fine-tune config over the shapes captions with "orange" added (no base run needed)."""
  from vidgen.models.text import small_text_config

  config = ml_collections.ConfigDict()
  config.conditioning = "text"
  config.text = small_text_config(vocab_size=18, max_length=8, width=16, depth=1, num_heads=2)
  config.data = ml_collections.ConfigDict(dict(name="shapes", num_frames=5, height=32, width=32, held_out=(), seed=0,
                                               extra_colors={"orange": (255, 128, 0)}))
  fields = dict(rank=4, alpha=4.0, targets=("attention",), init_new_words_from=(), new_words=("orange",), base_step=4)
  config.lora = ml_collections.ConfigDict({**fields, **lora_fields})
  return config


def test_bad_lora_config_is_refused_naming_the_field(tmp_path):
  from vidgen.train import lora_trainer, stages

  lora_trainer.validate_lora_config(lora_config())
  lora_trainer.validate_lora_config(lora_config(init_new_words_from=("red", "yellow")))
  for fields, message in (
      (dict(rank=0), "config.lora.rank: must be an integer >= 1"),
      (dict(rank=2.5), "config.lora.rank"),
      (dict(alpha=-1.0), "config.lora.alpha: must be a number > 0"),
      (dict(targets=("attention", "norms")), r"config.lora.targets: unknown target groups \['norms'\]"),
      (dict(targets=()), "config.lora.targets: name at least one"),
      (dict(targets="mlp"), "config.lora.targets: must be a list"),
      (dict(dropout=0.1), "config.lora.dropout: is not a LoRA setting"),
      (dict(init_new_words_from=("purple",)), r"config.lora.init_new_words_from: \['purple'\] are not words"),
      (dict(init_new_words_from=("orange",)), r"config.lora.init_new_words_from: \['orange'\] are not words")):
    with pytest.raises(ConfigError, match=message):
      lora_trainer.validate_lora_config(lora_config(**fields))

  # Before a base run is read: the fields that name it.
  config = ml_collections.ConfigDict(dict(trainer="lora", base_workdir="", lora=dict(rank=4, alpha=4.0,
                                                                                      targets=("mlp",))))
  with pytest.raises(ConfigError, match="config.base_workdir: must name the finished DiT run"):
    lora_trainer.resolve_config(config)
  config.base_workdir = str(tmp_path / "nowhere")
  with pytest.raises(RunNotFoundError, match="config.base_workdir: .*no config.json"):
    lora_trainer.resolve_config(config)
  # The stage validation reaches the same checks through config.trainer = "lora".
  from conftest import experiment_config

  smoke = experiment_config("shapes_lora", "runlocal")
  with pytest.raises(ConfigError, match="config.base_workdir"):
    stages.validate(smoke)
  os.makedirs(tmp_path / "vae_run")
  with open(tmp_path / "vae_run" / "config.json", "w") as f:
    f.write('{"trainer": "vae", "total_steps": 1}')
  smoke.base_workdir = str(tmp_path / "vae_run")
  with pytest.raises(ConfigError, match="holds a 'vae' run, not a DiT run"):
    stages.validate(smoke)
