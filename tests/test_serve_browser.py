"""The live page in headless Chromium (selenium): a fake camera plays a moving face, the page
uploads a photo, streams the camera to the real server (uvicorn on a port) and draws the renders;
a driving video comes back as a playable mp4.

The demo model renders here: the tiny random model's output hardly moves with the keypoints, and
the test checks that the drawn avatar changes with the driver.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from tests.live_browser import camera_clip, chromium, missing_browser, serving

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))
TOKEN = "browser-token"


@pytest.fixture(scope="module")
def page(tmp_path_factory, media_dir):
    """The page of a server with the demo model, opened with its token, its avatar made from a
    photo chosen in `#photo`."""
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By

    from bilayer.assets import DEMO_CHECKPOINT
    from bilayer.server.app import create_app
    from bilayer.server.config import ServeConfig

    folder = tmp_path_factory.mktemp("browser")
    camera = camera_clip(folder / "camera.y4m", seconds=3.0)
    with serving(create_app(ServeConfig(DEMO_CHECKPOINT, token=TOKEN))) as url:
        driver = chromium(camera, folder / "profile")
        try:
            driver.get(f"{url}/?token={TOKEN}")
            driver.find_element(By.ID, "photo").send_keys(str(media_dir / "bob" / "portrait.png"))
            wait(driver, "return document.getElementById('photo-status').textContent.startsWith('avatar ready')")
            assert driver.execute_script("return document.getElementById('source').naturalWidth") == 128  # the crop
            yield driver
        finally:
            driver.quit()


def wait(driver, script: str, timeout: float = 60.0):
    """The value of `script` once truthy."""
    deadline = time.monotonic() + timeout
    while not (value := driver.execute_script(script)):
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.1)
    return value


def avatar_pixels(driver) -> np.ndarray:
    data = driver.execute_script(
        "const c = document.getElementById('avatar');"
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);")
    return np.array(data, np.float32)


def test_the_camera_drives_the_avatar_live(page):
    from selenium.webdriver.common.by import By

    driver = page
    driver.find_element(By.ID, "start-camera").click()
    wait(driver, "return window.bilayerStats.frames >= 5")
    first, frames = avatar_pixels(driver), driver.execute_script("return window.bilayerStats.frames")
    assert first.size == 128 * 128 * 4 and first.std() > 10  # the demo model's render, drawn
    time.sleep(1.0)  # the head moves on
    stats = driver.execute_script("return window.bilayerStats")
    assert stats["frames"] > frames + 5 and stats["fps"] > 5 and 0 < stats["latency_ms_p50"] < 1000
    assert np.abs(avatar_pixels(driver) - first).mean() > 2  # it follows the driver
    assert "fps" in driver.find_element(By.ID, "live-status").text


def test_a_driving_video_plays_on_the_page(page, sample_video):
    from selenium.webdriver.common.by import By

    driver = page
    driver.find_element(By.ID, "video").send_keys(str(sample_video))
    driver.find_element(By.ID, "animate").click()
    wait(driver, "return document.getElementById('job-status').textContent.startsWith('done')")
    duration = wait(driver, "const v = document.getElementById('result'); return v.readyState >= 1 && v.duration")
    assert duration == pytest.approx(2.0, abs=0.1)  # the 2 s driver, playable here
    link = driver.find_element(By.ID, "download").get_attribute("href")
    assert "download=1" in link and f"token={TOKEN}" in link
