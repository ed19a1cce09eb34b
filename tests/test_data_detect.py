"""The real detectors on real photos and a real video: keypoints, masks, tracking, crop geometry."""
from __future__ import annotations

import numpy as np
import pytest

from bilayer.data.landmarks import PART_INDEX, flip_keypoints
from bilayer.data.preprocess import BoxSmoother, CropBox, FaceBox
from bilayer.data.samples import SAMPLE_PHOTOS, load_photo
from bilayer.io.media import MediaReader

FACES = [name for name, p in SAMPLE_PHOTOS.items() if p.has_face]


def hog_face_rect(image: np.ndarray) -> tuple[int, int, int, int]:
    """An independent detector (dlib's HOG) for checking where the face is."""
    import dlib

    rects = dlib.get_frontal_face_detector()(image, 1)
    assert len(rects) >= 1
    r = max(rects, key=lambda r: r.area())
    return r.left(), r.top(), r.right(), r.bottom()


@pytest.mark.parametrize("name", FACES)
def test_keypoints_land_on_the_face(annotator, name):
    photo = load_photo(name)
    annotator.reset()
    ann = annotator(photo)
    assert ann is not None
    kp = ann.keypoints_px  # (68, 2) in the 256x256 crop
    x0, y0, x1, y1 = hog_face_rect(ann.image)
    for eye in ("left_eye", "right_eye"):
        cx, cy = kp[PART_INDEX[eye]].mean(0)
        assert x0 < cx < x1 and y0 < cy < y1, eye
    right_eye, left_eye = kp[PART_INDEX["right_eye"]].mean(0), kp[PART_INDEX["left_eye"]].mean(0)
    assert right_eye[0] < kp[30, 0] < left_eye[0]  # nose tip between the eyes (subject's right = image left)
    assert max(right_eye[1], left_eye[1]) < kp[30, 1] < kp[62, 1] < kp[8, 1]  # eyes, nose, mouth, chin
    assert np.allclose(ann.keypoints, (kp + 0.5) / 256 * 2 - 1)
    # the face fills the middle of the crop like a VoxCeleb2 frame
    assert 0.35 < ann.face.size / ann.crop_box.side < 0.55
    assert 100 < kp[:, 0].mean() < 156


@pytest.mark.parametrize("name", FACES)
def test_mask_covers_the_face_not_the_corners(annotator, name):
    annotator.reset()
    ann = annotator(load_photo(name))
    mask = ann.mask
    assert mask.shape == (256, 256) and mask.dtype == np.float32 and 0 <= mask.min() and mask.max() <= 1
    x0, y0 = ann.keypoints_px.min(0).astype(int)
    x1, y1 = ann.keypoints_px.max(0).astype(int)
    assert mask[y0:y1, x0:x1].mean() > 0.9  # the face
    assert mask[:24, :24].mean() < 0.1 and mask[:24, -24:].mean() < 0.1  # top corners: background


def test_no_face_in_a_cat_photo(annotator):
    annotator.reset()
    assert annotator(load_photo("chelsea")) is None


def test_face_filling_the_frame_is_found(annotator):
    """A photo cut to its keypoints' box, which the detection model alone misses, is found through
    the detector's framed retry: the box lands on the face and the keypoints on the face."""
    photo = load_photo("astronaut")
    annotator.reset()
    face = annotator(photo).face
    x0, y0 = round(face.cx - face.size / 2), round(face.cy - face.size / 2)
    tight = np.ascontiguousarray(photo[y0:y0 + round(face.size), x0:x0 + round(face.size)])
    detector = annotator.tracker.detector
    assert detector._detect(tight) == []  # the case the retry is for
    (found,) = detector(tight)
    expected = FaceBox(face.cx - x0, face.cy - y0, face.size)
    assert found.box.iou(expected) > 0.6
    annotator.reset()
    ann = annotator(tight)
    assert ann is not None and ann.face.iou(expected) > 0.8
    assert ann.image[:16].max() == 0  # above the photo: the crop's black border


def test_mirrored_photo_gives_flipped_keypoints(annotator):
    """The flip permutation agrees with the detector itself: keypoints found on the mirrored
    photo = flip_keypoints(keypoints of the photo)."""
    photo = load_photo("astronaut")
    annotator.reset()
    kp = annotator(photo).keypoints
    annotator.reset()
    kp_mirror = annotator(np.ascontiguousarray(photo[:, ::-1])).keypoints
    err = np.abs(flip_keypoints(kp) - kp_mirror)
    assert np.median(err) < 0.02 and err[PART_INDEX["left_eye"]].max() < 0.04
    naive = kp * np.array([-1, 1], np.float32)  # mirrored without the permutation: eyes swapped
    assert np.abs(naive[PART_INDEX["left_eye"], 0] - kp_mirror[PART_INDEX["left_eye"], 0]).min() > 0.15


def test_tracking_a_real_video_is_smooth(annotator, sample_video):
    annotator.reset()
    with MediaReader(sample_video) as media:
        anns = [annotator(frame, t) for _, t, frame in media.frames()]
    assert len(anns) == 50 and all(a is not None for a in anns)
    raw = np.array([a.face.as_array() for a in anns])  # (T, 3) per-frame keypoint boxes
    crop = np.array([a.crop_box.as_array() for a in anns], np.float64)  # (T, 3) smoothed, rounded
    crop[:, :2] += crop[:, 2:] / 2  # centres
    crop[:, 2] /= annotator.cfg.crop_scale  # face sizes
    jitter_raw = np.abs(np.diff(raw, 2, axis=0)).mean()
    jitter_crop = np.abs(np.diff(crop, 2, axis=0)).mean()
    assert jitter_crop < jitter_raw / 2.5, (jitter_crop, jitter_raw)
    # yet the crop follows the head: the face stays centred in every crop
    centres = np.array([a.keypoints_px.mean(0) for a in anns])
    assert np.abs(centres - centres.mean(0)).max() < 12


def test_box_smoother_is_still_at_rest_and_follows_steps():
    smooth = BoxSmoother()
    still = [smooth(FaceBox(100, 100, 50), i / 25) for i in range(10)]
    assert all(b == FaceBox(100, 100, 50) for b in still)
    moved = [smooth(FaceBox(130, 100, 50), (10 + i) / 25) for i in range(50)]
    assert 100 < moved[0].cx < 130 and abs(moved[-1].cx - 130) < 1


def test_crop_box_maps_pixels_consistently():
    frame = np.zeros((300, 400), np.uint8)
    frame[120, 310] = 255  # a dot near the right border: the crop overhangs the frame
    box = CropBox.around(FaceBox(300, 130, 60), scale=2.2, shift=0.2)
    crop = box.crop(frame, 256)
    assert crop.shape == (256, 256)
    y, x = np.unravel_index(np.argmax(crop), crop.shape)
    np.testing.assert_allclose(box.to_crop(np.array([310.0, 120.0]), 256), [x, y], atol=1.5)
    assert crop[:, -10:].max() == 0  # outside the frame is black
