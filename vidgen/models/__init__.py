"""Models (Flax NNX modules built from configs): the spacetime VAE, the video DiT and the VAE's discriminator."""

from vidgen.models.discriminator import PatchDiscriminator3D
from vidgen.models.dit import Conditioning, VideoDiT, dit_config
from vidgen.models.text import (CLIPTextEncoder, SmallTextEncoder, T5Encoder, TextEncoder, WordTokenizer,
                                 load_text_encoder, shapes_tokenizer, small_text_config)
from vidgen.models.vae import DiagonalGaussian, SpacetimeVAE, default_vae_config

__all__ = ["Conditioning", "DiagonalGaussian", "PatchDiscriminator3D", "SpacetimeVAE", "VideoDiT",
           "default_vae_config", "dit_config", "CLIPTextEncoder", "SmallTextEncoder", "T5Encoder", "TextEncoder",
           "WordTokenizer", "load_text_encoder", "shapes_tokenizer", "small_text_config"]
