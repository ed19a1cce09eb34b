"""Evaluation metrics (paper Sec. 4, App. B.2 Table 2).

* `registry`: LPIPS, SSIM, CSIM and NME registered by name, each scoring (output, target) pairs;
* `complexity`: per-frame MACs of the inference path (the GMACs column);
* `psnr`: of reduced-precision and exported outputs against float32.

The protocol that runs avatars and scores them is `bilayer.evaluation` (a layer above the runtime).

Submodules are imported explicitly; importing `bilayer.metrics` loads no detector or network.
"""
