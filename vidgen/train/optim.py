"""Optimizers from config: AdamW with linear warm-up, a decay schedule and global-norm clipping."""

from __future__ import annotations

import jax
import ml_collections
import optax

from vidgen.config import require

SCHEDULES = ("cosine", "constant", "linear")


def default_optimizer_config(lr: float = 1e-4) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="adamw", lr=lr, warmup_steps=100, schedule="cosine", final_lr_fraction=0.1,
      b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, grad_clip=1.0))


def validate_optimizer_config(config: ml_collections.ConfigDict, prefix: str = "optimizer") -> None:
  require(config.name in ("adamw", "adam"), f"{prefix}.name", f"must be 'adamw' or 'adam', got {config.name!r}")
  require(config.lr > 0, f"{prefix}.lr", f"must be > 0, got {config.lr}")
  require(config.warmup_steps >= 0, f"{prefix}.warmup_steps", f"must be >= 0, got {config.warmup_steps}")
  require(config.schedule in SCHEDULES, f"{prefix}.schedule", f"must be one of {SCHEDULES}, got {config.schedule!r}")
  require(0 <= config.final_lr_fraction <= 1, f"{prefix}.final_lr_fraction",
          f"must be in [0, 1], got {config.final_lr_fraction}")
  require(config.grad_clip >= 0, f"{prefix}.grad_clip", f"must be >= 0 (0 = off), got {config.grad_clip}")


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  end = config.lr * config.final_lr_fraction
  if config.schedule == "constant":
    after = optax.constant_schedule(config.lr)
  elif config.schedule == "linear":
    after = optax.linear_schedule(config.lr, end, max(total_steps - warmup, 1))
  else:
    after = optax.cosine_decay_schedule(config.lr, max(total_steps - warmup, 1), alpha=config.final_lr_fraction)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warmup), after], [warmup])


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  validate_optimizer_config(config)
  lr = learning_rate_schedule(config, total_steps)
  parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip else []
  parts.append(optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay))
  return optax.chain(*parts)


def optimizer_state_shardings(optimizer: optax.GradientTransformation, abstract_opt_state, param_shardings, mesh):
  """Shardings of an optimizer state: moments mirror the parameters they belong to; counters are replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt_state, param_shardings,
                               transform_non_params=lambda _: replicated)
