"""vidgen: Sora-style latent video diffusion in JAX/Flax NNX."""

__version__ = "0.1.0"
