"""CSIM (paper Sec. 4): identity preservation, the cosine similarity of face-recognition
embeddings of the synthesized and the target frames.

The paper uses ArcFace [10]; its weights cannot be had offline, so bilayer uses dlib's 128-D
face-recognition ResNet (`bilayer.perceptual.DlibFaceResNet`, the weights shipped with bilayer).
Values are therefore not comparable with the paper's column. As the official code does for
ArcFace, both images are aligned with the same transform, computed from the TARGET keypoints
(dlib's 150x150 face chip), so no detection on the synthesized frame is needed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bilayer.perceptual import DlibFaceResNet, load_dlib_face_resnet


class CSIM:
    """PairMetric: cos(emb(pred), emb(target)), both chips aligned by the target keypoints."""

    def __init__(self, net: DlibFaceResNet | None = None):
        self.net = net or load_dlib_face_resnet()

    @torch.no_grad()
    def __call__(self, pred: Tensor, target: Tensor, target_keypoints: Tensor) -> Tensor:
        """pred, target (B, 3, H, W) in [-1, 1]; target_keypoints (B, 68, 2) normalized -> (B,)."""
        images = torch.cat([pred, target]).clamp(-1, 1)  # (2B, 3, H, W)
        emb = self.net(images, torch.cat([target_keypoints, target_keypoints])).embedding  # (2B, 128)
        e_pred, e_target = emb.chunk(2)
        return F.cosine_similarity(e_pred, e_target, dim=1)
