"""Evaluation results as JSON, as a table in the format of the paper's Table 2 (App. B.2), and as
an image grid (source | target | ours) for a look."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bilayer.evaluation.protocol import MASK_MODES, METHODS, SSIM_REGIONS, Evaluation
from bilayer.io.images import labelled_grid, to_uint8, write_png
from bilayer.metrics.registry import list_metrics, metric_spec

IMAGE_METRICS = tuple(list_metrics())  # the registered image metrics, in Table 2's order
#: Table 2's columns: (JSON key, header), the image metrics' arrows from the registry.
COLUMNS = (
    *((m, m.upper() + ("↑" if metric_spec(m).higher_is_better else "↓")) for m in IMAGE_METRICS),
    ("gmacs", "GMACs↓"), ("init_ms", "Init.(ms)↓"), ("inference_ms", "Inf.(ms)↓"),
)
ROW_NAMES = {"copy_source": "Copy source", "ours": "Ours"}
CSIM_NOTE = ("dlib's 128-D face-recognition ResNet, not ArcFace as in the paper: not comparable with its CSIM "
             "column (dlib's cosines are high even across people: 0.88 for the two sample-photo women)")


def results_json(ev: Evaluation, unavailable: dict[str, str], gmacs: float, meta: dict[str, Any]) -> dict[str, Any]:
    """{"ours": {...}, "copy_source": {...}, "n_pairs", "n_clips", "unavailable", "notes", **meta}.

    Every image metric key is present in both rows; a metric that could not be computed is null
    and `unavailable[name]` says why.
    """
    out: dict[str, Any] = {}
    for method in METHODS:
        computed = ev.scores[method]
        row: dict[str, float | None] = {m: ev.mean(method, m) if m in computed else None for m in IMAGE_METRICS}
        if "nme" in computed:
            row["nme_no_face"] = ev.unscored(method, "nme")
        row.update({m: ev.mean(method, m) for m in (*SSIM_REGIONS, "mask_iou") if m in computed})
        out[method] = row
    out["ours"].update(
        gmacs=gmacs,
        init_ms=statistics.median(ev.init_ms),
        inference_ms=statistics.median(ev.inference_ms),
    )
    notes = {
        "csim": CSIM_NOTE,
        "nme": "10 x mean keypoint error / eye-centre distance; outputs without a detected face are excluded, "
               "their fraction is nme_no_face",
        "timing": f"median over clips (init) and frames (inference, batch 1) on this machine's CPU with "
                  f"{torch.get_num_threads()} threads; the paper: NVIDIA P40, median of 1000 runs",
        "images": f"foreground only ({meta['mask']} masks): {MASK_MODES[meta['mask']]}"
                  + _masks_cut(meta.get("mask_threshold")),
        "mask_iou": "IoU of the pixels >= 0.5 of the predicted mask (copy source: the source's mask) and the "
                    "target's dataset mask",
        "ssim_regions": "SSIM of the windows wholly in the target's background (its mask < 0.5; background_windows "
                        "is their share) and of the other windows",
    }
    versus = {m: ev.versus_copy_source(m, metric_spec(m).higher_is_better)
              for m in IMAGE_METRICS if m in ev.scores["ours"]}
    notes["versus_copy_source"] = ("ours minus copy source over the pairs both scored: difference (mean), "
                                   "standard_error (each clip's pairs one cluster), pairs_better (share of "
                                   "pairs on which ours is better)")
    background = float(torch.cat(ev.background).mean()) if ev.background else None
    return {**out, "versus_copy_source": versus, "n_pairs": ev.n_pairs, "n_clips": len(ev.clips),
            "background_windows": background, "unavailable": unavailable, "notes": notes, **meta}


def _masks_cut(threshold: float | None) -> str:
    """The images note's tail for `EvalConfig.mask_threshold`."""
    return "" if threshold is None else f", every mask cut into 0/1 at {threshold:g}"


def _cell(value: float | None, key: str) -> str:
    if value is None:
        return "n/a"
    if key.endswith("_ms"):
        return f"{value:.0f}"
    return f"{value:.3g}" if key == "gmacs" else f"{value:.3f}"


def format_table(results: dict[str, Any]) -> str:
    """Table 2 layout: one row per method, the paper's columns, then the notes that qualify them."""
    width = max(len(n) for n in ROW_NAMES.values())
    lines = [f"{'Method':{width}}  " + "  ".join(f"{h:>10}" for _, h in COLUMNS)]
    for method in ("copy_source", "ours"):
        row = results[method]
        cells = ["-" if key not in row else _cell(row[key], key) for key, _ in COLUMNS]
        lines.append(f"{ROW_NAMES[method]:{width}}  " + "  ".join(f"{c:>10}" for c in cells))
    lines.append(f"{results['n_pairs']} pairs from {results['n_clips']} clips (first frame -> targets at 1 FPS)")
    versus = [f"{name.upper()} {v['difference']:+.3f} ± {v['standard_error']:.3f} ({100 * v['pairs_better']:.0f}%)"
              for name, v in results["versus_copy_source"].items() if v is not None]
    if versus:
        lines.append("Ours - copy source (mean ± standard error over clips; pairs where ours is better): "
                     + ", ".join(versus))
    for name, reason in results["unavailable"].items():
        lines.append(f"{name.upper()}: n/a, {reason}")
    lines.append(f"CSIM: {CSIM_NOTE}")
    lines.append(f"Images: {results['notes']['images']}")
    if "ssim_background" in results["ours"]:
        ours, copy = results["ours"], results["copy_source"]
        regions = ((f"background windows ({100 * results['background_windows']:.0f}%)", "ssim_background"),
                   ("the other windows", "ssim_foreground"))
        lines.append("SSIM by region of the target: " + "; ".join(
            f"{label} ours {_cell(ours[key], key)}, copy source {_cell(copy[key], key)}" for label, key in regions))
    lines.append(f"Silhouette (mask IoU with the target's mask): ours {_cell(results['ours']['mask_iou'], 'mask_iou')}, "
                 f"copy source {_cell(results['copy_source']['mask_iou'], 'mask_iou')}")
    if "nme_no_face" in results["ours"]:
        lines.append("NME: outputs with no face found excluded: "
                     f"ours {100 * results['ours']['nme_no_face']:.1f}%, "
                     f"copy source {100 * results['copy_source']['nme_no_face']:.1f}%")
    lines.append(f"Timing: {results['notes']['timing']}")
    return "\n".join(lines)


def write_grid(ev: Evaluation, path: str | Path, max_rows: int = 8) -> Path:
    """PNG with one row per clip (its first pair): source | target | ours, as they were scored."""
    rows = []
    for ex in ev.examples[:max_rows]:
        cells = to_uint8(torch.cat([ex.source, ex.target, ex.ours]))  # (3, H, W, 3)
        rows.append(np.concatenate(list(cells), axis=1))  # (H, 3W, 3)
    return write_png(path, labelled_grid(rows, ("source", "target", "ours")))
