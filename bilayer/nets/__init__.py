"""The five bi-layer networks (paper Sec. 3.1, App. A.2) and the model that composes the four of an
avatar (the discriminator is training-only)."""
from bilayer.nets.discriminator import Discriminator, DiscriminatorOutput
from bilayer.nets.embedder import Embedder
from bilayer.nets.inference_generator import InferenceGenerator, InferenceOutput, identity_grid
from bilayer.nets.layers import apply_mask
from bilayer.nets.model import BASE_NETWORKS, NETWORKS, AvatarState, BilayerModel, Rendered, warp_texture
from bilayer.nets.texture_generator import TextureGenerator
from bilayer.nets.updater import TextureUpdater

__all__ = [
    "BASE_NETWORKS",
    "NETWORKS",
    "AvatarState",
    "BilayerModel",
    "Discriminator",
    "DiscriminatorOutput",
    "Embedder",
    "InferenceGenerator",
    "InferenceOutput",
    "Rendered",
    "TextureGenerator",
    "TextureUpdater",
    "apply_mask",
    "identity_grid",
    "warp_texture",
]
