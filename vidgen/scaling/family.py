"""Model families for scaling studies: VideoDiT sizes indexed by depth, width and heads tied to it.

A family fixes the shape of the network and varies its size along one index, as scaling-law studies do (Kaplan et al.
keep d_model / n_layer roughly constant; the DiT paper grows depth and width together):

  depth = the size index,  width = aspect x depth,  num_heads = width / head_width.

Everything else (patch size, attention pattern and windows, conditioning) comes from the base config, so a family
member differs from its neighbours in size only. Depth must be a whole number of the attention pattern's super-blocks.

Public names:
  family_member(dit_config, depth, aspect, head_width): the base `config.dit` resized to one member.
  family_table(config, depths, aspect, head_width): per member, its shape, parameter counts and training FLOPs per step.
"""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from vidgen.errors import ConfigError
from vidgen.scaling.flops import param_counts, train_flops_per_step


def family_member(dit_config: ml_collections.ConfigDict, depth: int, aspect: int, head_width: int
                  ) -> ml_collections.ConfigDict:
  """A copy of `dit_config` with depth `depth`, width `aspect * depth` and `width / head_width` heads.

  Raises ConfigError when depth is not a positive multiple of the attention pattern's length (each super-block holds
  one layer of every kind in the pattern) or when a width would not split into whole heads.
  """
  pattern = len(dit_config.attention_pattern)
  if not isinstance(depth, int) or depth < 1 or depth % pattern:
    raise ConfigError(f"depth={depth!r}: a family member's depth must be a positive multiple of the attention "
                     f"pattern's length {pattern} ({tuple(dit_config.attention_pattern)})")
  if aspect < 1 or head_width < 1 or (aspect * depth) % head_width:
    raise ConfigError(f"width = aspect x depth = {aspect} x {depth} = {aspect * depth} does not split into heads of "
                     f"head_width={head_width}")
  member = ml_collections.ConfigDict(dit_config.to_dict())
  member.update(depth=depth, width=aspect * depth, num_heads=aspect * depth // head_width)
  member.variant = f"family-d{depth}"
  return member


def family_table(config: ml_collections.ConfigDict, depths: Sequence[int], aspect: int, head_width: int
                 ) -> list[dict[str, Any]]:
  """One row per depth of a DiT run config's family: depth, width, num_heads, params, non_embedding_params and the
  training FLOPs of one video step and one image step (`vidgen.scaling.train_flops_per_step`)."""
  rows = []
  for depth in depths:
    run = ml_collections.ConfigDict(config.to_dict())
    run.dit = family_member(config.dit, depth, aspect, head_width)
    counts = param_counts(run.dit)
    rows.append(dict(depth=depth, width=run.dit.width, num_heads=run.dit.num_heads, params=counts["total"],
                     non_embedding_params=counts["non_embedding"],
                     video_step_flops=train_flops_per_step(run, "video"),
                     image_step_flops=train_flops_per_step(run, "image")))
  return rows
