"""Models (Flax NNX modules built from configs): the spacetime VAE, the video DiT, text encoders, the discriminator."""

from vidgen.models.discriminator import PatchDiscriminator3D
from vidgen.models.dit import Conditioning, VideoDiT
from vidgen.models.dit_config import DiTSpec, dit_config
from vidgen.models.text import (CLIPTextEncoder, SmallTextEncoder, T5Encoder, TextEncoder, WordTokenizer,
                                 load_text_encoder, small_text_config)
from vidgen.models.vae import DiagonalGaussian, SpacetimeVAE, default_vae_config

__all__ = ["Conditioning", "DiTSpec", "DiagonalGaussian", "PatchDiscriminator3D", "SpacetimeVAE", "VideoDiT",
           "default_vae_config", "dit_config", "CLIPTextEncoder", "SmallTextEncoder", "T5Encoder", "TextEncoder",
           "WordTokenizer", "load_text_encoder", "small_text_config"]
