"""Files shipped inside the package (paths only: importing this loads nothing heavy)."""
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
#: The demo model (docs/demo_model.md): the default checkpoint of animate, demo and evaluate.
DEMO_CHECKPOINT = ASSETS / "demo.pt"
#: The demo's motion: a (250, 68, 2) keypoint track of a held-out clip at 25 fps (`bilayer track`).
DEMO_TRACK = ASSETS / "demo_track.npy"
DEMO_TRACK_FPS = 25.0
#: dlib's face-recognition ResNet ported to PyTorch (scripts/convert_dlib_resnet.py).
DLIB_FACE_RESNET = ASSETS / "dlib_face_resnet_v1.pt"
