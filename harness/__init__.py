"""Evolving the attention class of a small causal LM with stock OpenEvolve, under a hardened evaluator."""

__version__ = "0.1.0"
