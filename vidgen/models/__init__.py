"""Models (Flax NNX modules built from configs): the spacetime VAE, the video DiT, text encoders, the discriminator,
and published networks (the official DiT weights, the Wan 2.1 video VAE, the SD image VAE) loaded into them."""

from vidgen.models.discriminator import PatchDiscriminator3D
from vidgen.models.dit import Conditioning, VideoDiT
from vidgen.models.dit_checkpoint import load_dit_checkpoint
from vidgen.models.dit_config import DiTSpec, dit_config
from vidgen.models.image_vae import ImageVAE, image_vae_config, load_image_vae
from vidgen.models.pretrained import load_pretrained_vae
from vidgen.models.text import (CLIPTextEncoder, SmallTextEncoder, T5Encoder, TextEncoder, WordTokenizer,
                                 load_text_encoder, small_text_config)
from vidgen.models.vae import DiagonalGaussian, SpacetimeVAE, default_vae_config
from vidgen.models.wan_vae import WanVAE, load_wan_vae, wan_vae_config

__all__ = ["CLIPTextEncoder", "Conditioning", "DiTSpec", "DiagonalGaussian", "ImageVAE", "PatchDiscriminator3D",
           "SmallTextEncoder", "SpacetimeVAE", "T5Encoder", "TextEncoder", "VideoDiT", "WanVAE", "WordTokenizer",
           "default_vae_config", "dit_config", "image_vae_config", "load_dit_checkpoint", "load_image_vae",
           "load_pretrained_vae", "load_text_encoder", "load_wan_vae", "small_text_config", "wan_vae_config"]
