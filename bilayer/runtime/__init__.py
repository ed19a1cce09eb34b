"""Per-avatar runtime: initialize once from a source frame, render cheaply per frame.

Imports nothing from training, losses or preprocessing.
"""
from bilayer.runtime.avatar import Avatar

__all__ = ["Avatar"]
