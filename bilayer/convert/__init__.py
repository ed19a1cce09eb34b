"""Weights of other implementations as bilayer checkpoints."""
