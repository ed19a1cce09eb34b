"""The live app's whole loop: camera -> browser -> server -> browser -> screen, through headless
Chromium with a fake camera, for the demo model and a random-weight medium model.

Per model: `bilayer serve`'s app runs with uvicorn on a port of 127.0.0.1 (in this process);
Chromium (tests/live_browser.py) opens the page, whose camera plays a .y4m of the sample face
video (Grace Hopper's head moving, 256x256 at 25 fps, looped); the page uploads the astronaut
photo and streams. After a warm-up stream, a fresh one is measured for `--seconds`:

* latency_ms p50 / p99: the page's own numbers (window.bilayerStats, its last 300 frames), from
  the camera frame (its capture time where Chromium gives one) to the render drawn on the page;
* fps: renders drawn per second (the camera gives 25);
* server stages (GET /api/stats, that stream only): decode, keypoints (detector + landmarks +
  smoothed crop), render (the avatar's folded network), compose (background), encode (JPEG);
* server_cores: CPU seconds of this process (the server; selenium only polls) per second.

    python benchmarks/live.py --json OUT.json [--checkpoint C] [--seconds 10]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.official import cpu_name  # noqa: E402
from tests.live_browser import camera_clip, chromium, missing_browser, serving  # noqa: E402

WARMUP_S = 4.0


def medium_checkpoint(folder: Path) -> Path:
    """A random-weight medium model (speed does not depend on the weights)."""
    import torch

    from bilayer.checkpoint import save_checkpoint
    from bilayer.config import model_config
    from bilayer.nets import BilayerModel

    torch.manual_seed(0)
    path = folder / "medium.pt"
    save_checkpoint(path, BilayerModel(model_config("medium")))
    return path


def wait(driver, script: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (value := driver.execute_script(script)):
        if time.monotonic() > deadline:
            raise TimeoutError(script)
        time.sleep(0.1)
    return value


def measure(checkpoint: Path, camera: Path, photo: Path, folder: Path, seconds: float) -> dict:
    """One model's loop (see the module)."""
    import httpx
    from selenium.webdriver.common.by import By

    from bilayer.server.app import create_app
    from bilayer.server.config import ServeConfig

    app = create_app(ServeConfig(checkpoint))
    with serving(app) as url:
        driver = chromium(camera, folder / f"profile-{checkpoint.stem}")
        try:
            driver.get(url)
            start = time.perf_counter()
            driver.find_element(By.ID, "photo").send_keys(str(photo))
            wait(driver, "return document.getElementById('photo-status').textContent.startsWith('avatar ready')")
            avatar_s = time.perf_counter() - start
            driver.find_element(By.ID, "start-camera").click()
            wait(driver, "return window.bilayerStats.frames >= 1")
            time.sleep(WARMUP_S)
            driver.find_element(By.ID, "stop-camera").click()  # measure a fresh stream, warmed up
            driver.find_element(By.ID, "start-camera").click()
            frames0 = wait(driver, "return window.bilayerStats.frames > 0 && window.bilayerStats.frames")
            wall0, cpu0 = time.perf_counter(), time.process_time()
            time.sleep(seconds)
            stats = driver.execute_script("return window.bilayerStats")
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            (stream,) = httpx.get(f"{url}/api/stats").json()["streams"]
        finally:
            driver.quit()
    model = app.state.server.model_config
    return {
        "checkpoint": str(checkpoint), "image_size": model.image_size, "inf_max_channels": model.inf_max_channels,
        "avatar_s": round(avatar_s, 2), "fps": round((stats["frames"] - frames0) / wall, 2),
        "latency_ms_p50": round(stats["latency_ms_p50"], 1), "latency_ms_p99": round(stats["latency_ms_p99"], 1),
        "server_cores": round(cpu / wall, 2), "dropped": stream["dropped"], "server_stages": stream["stages"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--checkpoint", metavar="C", help="the first model (default: the shipped demo model)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per model")
    args = parser.parse_args()
    if (reason := missing_browser()) is not None:
        sys.exit(f"benchmarks/live.py: {reason}")

    import torch

    from bilayer.checkpoint import resolve_checkpoint
    from bilayer.data.samples import SAMPLE_PHOTOS

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        camera = camera_clip(folder / "camera.y4m", seconds=4.0)
        first = "demo" if args.checkpoint is None else Path(args.checkpoint).stem
        models = {first: resolve_checkpoint(args.checkpoint), "medium (random)": medium_checkpoint(folder)}
        results = {name: measure(ckpt, camera, SAMPLE_PHOTOS["astronaut"].path, folder, args.seconds)
                   for name, ckpt in models.items()}
    report = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "camera": "256x256 at 25 fps (fake, y4m)",
              "seconds": args.seconds, "models": results}
    print(f"{report['cpu']}, {report['threads']} torch threads; camera {report['camera']}, "
          f"{args.seconds:g} s per model")
    stages = list(next(iter(results.values()))["server_stages"])
    print(f"{'model':<16} {'px':>4} {'fps':>6} {'p50 ms':>7} {'p99 ms':>7} {'cores':>6}  "
          + "  ".join(f"{s:>9}" for s in stages) + "   (server stage p50 ms)")
    for name, r in results.items():
        print(f"{name:<16} {r['image_size']:>4} {r['fps']:>6.1f} {r['latency_ms_p50']:>7.1f} "
              f"{r['latency_ms_p99']:>7.1f} {r['server_cores']:>6.2f}  "
              + "  ".join(f"{r['server_stages'][s]['p50_ms']:>9.2f}" for s in stages))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
