"""Data: preprocessing of real videos/photos (preprocess/), the dataset layout (store.py), the
training pair dataset (dataset.py), the landmark image (landmarks.py) and sample media (samples.py).

Submodules are imported explicitly; importing `bilayer.data` loads no detector.
"""
