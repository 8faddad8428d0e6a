"""Published VAEs by folder: a diffusers-format folder (config.json + weights) -> the vidgen module for its class.

  vae = load_pretrained_vae("Wan2.1-T2V-1.3B-Diffusers/vae")     # AutoencoderKLWan -> WanVAE
  vae = load_pretrained_vae("sd-vae-ft-ema")                      # AutoencoderKL -> ImageVAE (DiT's latents)

Either has the interface of vidgen's own SpacetimeVAE (encode / decode / normalize / latent_shape, and a `config` dict
with `spatial_downsample`, `temporal_downsample` and `latent_channels`), so every place that takes a VAE takes it:
`config.pretrained_vae` names such a folder for a DiT run's latent cache and its pipeline.
"""

from __future__ import annotations

import json
import os

from vidgen.errors import InputError

__all__ = ["PRETRAINED_VAES", "load_pretrained_vae", "pretrained_vae_class", "pretrained_vae_geometry"]

# diffusers class name -> (module, loader)
PRETRAINED_VAES = {"AutoencoderKLWan": ("vidgen.models.wan_vae", "load_wan_vae"),
                   "AutoencoderKL": ("vidgen.models.image_vae", "load_image_vae")}


def _read_config(path: str) -> dict:
  config_file = os.path.join(path, "config.json")
  if not os.path.isfile(config_file):
    raise InputError(f"{path}: not a diffusers VAE folder (no config.json)")
  with open(config_file) as f:
    config = json.load(f)
  if config.get("_class_name") not in PRETRAINED_VAES:
    raise InputError(f"{config_file}: a {config.get('_class_name')!r}; vidgen loads {sorted(PRETRAINED_VAES)}")
  return config


def pretrained_vae_class(path: str) -> str:
  """The diffusers class a VAE folder holds (from its config.json); InputError when it is none vidgen loads."""
  return _read_config(path)["_class_name"]


def pretrained_vae_geometry(path: str) -> dict[str, int]:
  """{spatial_downsample, temporal_downsample, latent_channels} of a VAE folder, from its config.json alone (what
  config validation needs before any weight is read)."""
  config = _read_config(path)
  if config["_class_name"] == "AutoencoderKLWan":
    return {"spatial_downsample": 8, "temporal_downsample": 4, "latent_channels": int(config.get("z_dim", 16))}
  return {"spatial_downsample": 2 ** (len(config.get("block_out_channels", (64,))) - 1), "temporal_downsample": 1,
          "latent_channels": int(config.get("latent_channels", 4))}


def load_pretrained_vae(path: str):
  """The VAE in a diffusers folder as a vidgen module (WanVAE or ImageVAE), float32."""
  import importlib
  module, loader = PRETRAINED_VAES[pretrained_vae_class(path)]
  return getattr(importlib.import_module(module), loader)(path)
