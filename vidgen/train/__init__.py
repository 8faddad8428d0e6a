"""Training: runs composed from stages (`train_and_evaluate`), the shared loop, trainers, optimizers and writers."""


def __getattr__(name: str):
  # Lazy: the loop pulls in clu and TensorFlow (TensorBoard writers), which configs and benchmarks that only need
  # `vidgen.train.optim` should not pay for.
  if name == "train_and_evaluate":
    from vidgen.train.stages import train_and_evaluate

    return train_and_evaluate
  raise AttributeError(f"module 'vidgen.train' has no attribute {name!r}")


__all__ = ["train_and_evaluate"]
