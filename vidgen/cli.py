"""The `vidgen` command: `vidgen train --config experiments/NAME.py[:ARG] --workdir DIR [--config.FIELD=VALUE ...]`.

A thin entry point: flags are parsed here and the work is done by importable functions (`train_and_evaluate`).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/shapes_vae.py or experiments/shapes_vae.py:runlocal.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, TensorBoard and samples.")

USAGE = "usage: vidgen train --config experiments/NAME.py[:ARG] --workdir DIR [--config.FIELD=VALUE ...]"


def _train() -> None:
  from vidgen.train.loop import train_and_evaluate

  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError(f"train needs --config and --workdir\n{USAGE}")
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


COMMANDS = {"train": _train}


def main(argv: list[str]) -> None:
  if not flags.FLAGS["verbosity"].present:
    # Library INFO logs (orbax's per-save chatter, clu's logging writer) would drown the progress line.
    logging.set_verbosity(logging.WARNING)
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"expected one command from {sorted(COMMANDS)}, got {argv[1:]}\n{USAGE}")
  COMMANDS[argv[1]]()


def run() -> None:
  """Console-script entry point."""
  app.run(main, argv=sys.argv)
