"""Scaling-law tooling: analytic FLOPs and parameter counts, model families, sweep definitions, power-law fits.

Running a sweep trains models, so it lives above this package, in `vidgen.train.sweep`.
"""

from vidgen.scaling.family import family_member, family_table
from vidgen.scaling.fits import (
    ChinchillaFit,
    IsoflopFit,
    IsoflopProfile,
    PowerLawFit,
    compute_optimal_frontier,
    fit_chinchilla,
    fit_isoflop,
    fit_power_law,
)
from vidgen.scaling.flops import (
    forward_flops,
    forward_macs,
    param_count,
    param_counts,
    text_encoder_forward_flops,
    text_encoder_param_counts,
    train_flops_per_example,
    train_flops_per_step,
)
from vidgen.scaling.sweep import Point, expand, point_result, training_compute

__all__ = [
    "ChinchillaFit", "IsoflopFit", "IsoflopProfile", "Point", "PowerLawFit", "compute_optimal_frontier", "expand",
    "family_member", "family_table", "fit_chinchilla", "fit_isoflop", "fit_power_law", "forward_flops",
    "forward_macs", "param_count", "param_counts", "point_result", "text_encoder_forward_flops",
    "text_encoder_param_counts", "train_flops_per_example", "train_flops_per_step", "training_compute",
]
