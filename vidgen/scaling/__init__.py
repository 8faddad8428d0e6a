"""Scaling-law tooling: analytic FLOPs and parameter counts of the models."""

from vidgen.scaling.flops import forward_flops, forward_macs, param_count

__all__ = ["forward_flops", "forward_macs", "param_count"]
