"""Training: the shared loop (`train_and_evaluate`), trainers, checkpoints, optimizers and run writers."""

from vidgen.train.loop import train_and_evaluate

__all__ = ["train_and_evaluate"]
