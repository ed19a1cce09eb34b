"""Face detector choice: dlib HOG vs MediaPipe BlazeFace, found faces and ms per frame.

Each real photo (two frontal portraits and scikit-image's three-quarter-view cameraman) is scaled
(0.15x to 2x) and rotated (-30 to 30 degrees) into a 1280x720 frame: 25 frames per photo. HOG
runs on a 640x360 downscale (as it must to be usable; full HD HOG is far slower) with and without
its 2x upsampling; MediaPipe runs on the full frame with its short-range (0) and full-range (1)
models. One core.

    python benchmarks/detectors.py [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from bilayer.data.samples import SAMPLE_PHOTOS, SamplePhoto
from bilayer.io.native import quiet_stderr

PHOTOS = {
    "astronaut": SAMPLE_PHOTOS["astronaut"],
    "grace_hopper": SAMPLE_PHOTOS["grace_hopper"],
    "cameraman": SamplePhoto("cameraman", "skimage", "data/camera.png", True, None),
}
SCALES, ANGLES, FRAME = (0.15, 0.3, 0.6, 1.0, 2.0), (-30, -15, 0, 15, 30), (1280, 720)


def frames(photo: SamplePhoto):
    with quiet_stderr():
        image = cv2.cvtColor(cv2.imread(str(photo.path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    for scale in SCALES:
        for angle in ANGLES:
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
            m[:, 2] += (FRAME[0] / 2 - w / 2, FRAME[1] / 2 - h / 2)
            yield cv2.warpAffine(image, m, FRAME, borderMode=cv2.BORDER_REFLECT)


def detectors() -> dict:
    import dlib
    from mediapipe.python.solutions.face_detection import FaceDetection

    hog = dlib.get_frontal_face_detector()
    with quiet_stderr():
        mp = {m: FaceDetection(min_detection_confidence=0.5, model_selection=m) for m in (0, 1)}
        for net in mp.values():
            net.process(np.zeros((64, 64, 3), np.uint8))

    def half(f):
        return cv2.resize(f, (FRAME[0] // 2, FRAME[1] // 2), interpolation=cv2.INTER_AREA)

    return {
        "dlib HOG @640x360": lambda f: len(hog(half(f), 0)),
        "dlib HOG x2 @640x360": lambda f: len(hog(half(f), 1)),
        "mediapipe short-range": lambda f: len(mp[0].process(f).detections or []),
        "mediapipe full-range": lambda f: len(mp[1].process(f).detections or []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)
    results: dict[str, dict] = {}
    for name, detect in detectors().items():
        found, seconds, n = {}, 0.0, 0
        for photo_name, photo in PHOTOS.items():
            found[photo_name] = 0
            for frame in frames(photo):
                start = time.perf_counter()
                found[photo_name] += detect(frame) > 0
                seconds += time.perf_counter() - start
                n += 1
        results[name] = {"found": found, "ms": round(1000 * seconds / n, 1)}
    per_photo = len(SCALES) * len(ANGLES)
    print(f"faces found out of {per_photo} frames per photo (1280x720, scales {SCALES}, angles {ANGLES}), one core")
    print(f"{'detector':24} " + " ".join(f"{p:>13}" for p in PHOTOS) + f" {'total':>7} {'ms':>6}")
    for name, r in results.items():
        print(f"{name:24} " + " ".join(f"{r['found'][p]:13d}" for p in PHOTOS)
              + f" {sum(r['found'].values()):7d} {r['ms']:6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
