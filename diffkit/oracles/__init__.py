"""Exact Gaussian-mixture oracles (unconditional and class-conditional)."""
