"""Evaluation metrics (paper Sec. 4, App. B.2 Table 2).

* `registry`: LPIPS, SSIM, CSIM and NME registered by name, each scoring (output, target) pairs;
* `complexity`: per-frame MACs of the inference path (the GMACs column);
* `evaluation`: the protocol (first frame of each test clip -> targets at 1 FPS, init and
  inference timed, copy-source baseline) and `report`: JSON, Table 2 layout, image grid.

Submodules are imported explicitly; importing `bilayer.metrics` loads no detector or network.
"""
