"""bilayer: Fast Bi-layer Neural Synthesis of One-Shot Realistic Head Avatars (ECCV 2020)."""

__version__ = "0.1.0"
