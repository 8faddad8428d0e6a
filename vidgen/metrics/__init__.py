"""Evaluation metrics."""

from vidgen.metrics.image import psnr, ssim
from vidgen.metrics.prompt_following import ClipAttributes, analyze_clip, prompt_following

__all__ = ["ClipAttributes", "analyze_clip", "prompt_following", "psnr", "ssim"]
