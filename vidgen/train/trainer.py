"""The trainer interface: what the generic loop (`vidgen.train.loop.run`) asks of a model-specific trainer.

A trainer is built from its validated config, the mesh and the workdir, with everything it trains on already made
(a trainer never trains another model or starts another loop: multi-stage runs are composed in
`vidgen.train.stages`). The loop owns the mesh-wide batch layout, checkpoints, resumption, preemption, metrics and
the NaN/Inf guard; the trainer owns its state, its step and its evaluation.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterator, Protocol

import jax
import numpy as np


class ResumableIterator(Protocol):
  """An infinite batch stream whose position is a JSON-serializable state (saved with every checkpoint)."""

  def __iter__(self) -> Iterator[dict]: ...

  def __next__(self) -> dict: ...

  def get_state(self) -> dict: ...

  def set_state(self, state: dict) -> None: ...


class Trainer(Protocol):
  """Model-specific parts of a training run.

  State is a pytree (a flax.struct dataclass) whose fields are plain nested dicts of arrays; the checkpoint stores it
  field by field, and `vidgen.runs` reads the weight fields back for inference.
  """

  def init_state(self, key: jax.Array) -> Any:
    """A fresh state; called under `jax.jit` with `state_shardings()` as the output shardings."""

  def state_shardings(self) -> Any:
    """The state's shardings: the same pytree of NamedShardings, from the modules' logical axes."""

  def make_iterator(self, process_index: int, process_count: int) -> ResumableIterator:
    """This process's rows [index * n, (index + 1) * n) of every global batch (n = batch_size / count)."""

  def host_batch(self, batch: dict) -> dict[str, np.ndarray]:
    """The arrays of an iterator batch that go to the devices (the rest, e.g. caption strings, stays on the host)."""

  def phase(self, step: int) -> Hashable:
    """A static value selecting a compiled variant of the step (e.g. GAN on / off, image / video batch)."""

  def train_step(self, state: Any, batch: dict[str, jax.Array], phase: Hashable) -> tuple[Any, dict[str, jax.Array]]:
    """One pure optimization step (jitted by the loop): (new state, scalar metrics incl. "loss", "grad_norm").

    A trainer with frozen inputs (an optional method `frozen()` returning a pytree of placed arrays the step reads but
    never updates, such as the base weights under LoRA adapters; the loop neither donates nor saves them) takes them
    as a fourth argument: `train_step(state, batch, phase, frozen)`."""

  def model_flops_per_step(self, phase: Hashable) -> float | None:
    """Model FLOPs of one step of `phase` over all devices (for MFU); None: use XLA's cost analysis of the step."""

  def evaluate(self, state: Any, step: int) -> dict[str, float]:
    """Evaluation at `config.sample_every` steps and at the last step: scalar metrics (samples go to the workdir)."""

  def finalize(self, state: Any) -> Any:
    """The state to save at the last step (e.g. with measured latent statistics)."""
