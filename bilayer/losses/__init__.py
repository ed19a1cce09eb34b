"""Training objectives of the bi-layer model (paper Sec. 3.2-3.4, App. A.1).

Pure functions of tensors (`adversarial`, `reconstruction`, `perceptual`) and one loss object
(`objective.Objective`) that returns the weighted terms of a phase as a dict of named scalars.
"""
from bilayer.losses.adversarial import (
    discriminator_hinge,
    feature_matching,
    generator_hinge,
    relativistic_scores,
)
from bilayer.losses.objective import GeneratorLosses, LossWeights, Objective, warp_weight
from bilayer.losses.perceptual import PerceptualNet, perceptual_l1
from bilayer.losses.reconstruction import mask_bce, pixel_l1, warp_regularizer

__all__ = [
    "GeneratorLosses",
    "LossWeights",
    "Objective",
    "PerceptualNet",
    "discriminator_hinge",
    "feature_matching",
    "generator_hinge",
    "mask_bce",
    "perceptual_l1",
    "pixel_l1",
    "relativistic_scores",
    "warp_regularizer",
    "warp_weight",
]
