"""Evaluation metrics."""

from vidgen.metrics.image import psnr, ssim

__all__ = ["psnr", "ssim"]
