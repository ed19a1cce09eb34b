"""PairDataset: tensors, pair sampling, identity split, flip and colour augmentation."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from bilayer.data.augment import LUMA, color_matrix, hue_rotation
from bilayer.data.config import DatasetConfig
from bilayer.data.dataset import PairDataset, identity_split
from bilayer.data.landmarks import PART_INDEX
from bilayer.data.store import ClipReader, ClipRecord, DatasetStore
from bilayer.errors import InputError


@pytest.mark.parametrize("size", [64, 128])
def test_items_are_tensors_of_the_documented_shapes(dataset_dir, size):
    ds = PairDataset(dataset_dir, DatasetConfig(split="all"), image_size=size, seed=0)
    assert len(ds) == 3 and ds.identities == {"alice", "bob"}
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    for role in ("source", "target"):
        image, kp = getattr(batch, role).image, getattr(batch, role).keypoints
        lm, mask = getattr(batch, role).landmark_image, getattr(batch, role).mask
        assert image.shape == lm.shape == (3, 3, size, size) and mask.shape == (3, 1, size, size)
        assert kp.shape == (3, 68, 2)
        assert all(t.dtype == torch.float32 for t in (image, kp, lm, mask))
        assert -1 <= image.min() and image.max() <= 1 and 0 <= mask.min() and mask.max() <= 1
        assert kp.abs().max() < 1 and lm.min() == -1 and lm.max() > 0.5
        # the mask is foreground where the face is
        x, y = ((kp[0, 30] + 1) / 2 * size).long()
        assert mask[0, 0, y, x] > 0.9


def test_pairs_respect_the_gap_and_come_from_one_clip(dataset_dir):
    ds = PairDataset(dataset_dir, DatasetConfig(split="all", min_gap=5, max_gap=5, flip_probability=0), image_size=64, seed=1)
    assert len(ds) == 2  # the photo (one frame) cannot give a gap of 5
    clip = next(i for i, c in enumerate(ds.clips) if c.num_frames == 50)
    with ClipReader(dataset_dir / ds.clips[clip].file) as reader:
        all_kp = torch.from_numpy(reader.array("keypoints"))  # (50, 68, 2)
    for epoch in range(4):
        ds.set_epoch(epoch)
        item = ds[clip]
        s = int((all_kp - item.source.keypoints).abs().amax((1, 2)).argmin())
        t = int((all_kp - item.target.keypoints).abs().amax((1, 2)).argmin())
        assert abs(s - t) == 5
    # a seed makes items reproducible
    a, b = ds[clip], ds[clip]
    assert all(torch.equal(x, y) for frame_a, frame_b in zip(a, b) for x, y in zip(frame_a, frame_b))


def test_identity_split_is_disjoint_and_stable(tmp_path):
    store = DatasetStore(tmp_path)
    store.prepare()
    for i in range(300):
        ident = f"id{i // 3:05d}"
        store.add_clip(ClipRecord(f"c{i}", ident, f"/v/{ident}/{i}.mp4", 1, 1, f"shards/00/c{i}.zip", 10, 25.0, 640,
                                  360, 120.0))
    cfg = DatasetConfig(test_fraction=0.2)
    train, test = PairDataset(tmp_path, replace(cfg, split="train")), PairDataset(tmp_path, replace(cfg, split="test"))
    assert not train.identities & test.identities
    assert not {c.clip_id for c in train.clips} & {c.clip_id for c in test.clips}
    assert len(train) + len(test) == 300
    assert 0.1 < len(test.identities) / 100 < 0.3
    assert all(identity_split(i, 0.2) == "test" for i in test.identities)
    with pytest.raises(InputError, match="no clips in split 'test'"):
        PairDataset(tmp_path, DatasetConfig(split="test", test_fraction=0.0))
    with pytest.raises(InputError, match="not a dataset"):
        PairDataset(tmp_path / "nothing")


@pytest.mark.parametrize("split", ["train", "all"])  # "all": a run on every identity flips too
def test_flip_maps_left_eye_keypoints_onto_right_eye_positions(dataset_dir, split):
    plain = PairDataset(dataset_dir, DatasetConfig(split=split, test_fraction=0, flip_probability=0), image_size=128, seed=3)
    flipped = PairDataset(dataset_dir, DatasetConfig(split=split, test_fraction=0, flip_probability=1), image_size=128, seed=3)
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        for role in ("source", "target"):
            kp_a, kp_b = getattr(a, role).keypoints, getattr(b, role).keypoints
            mirrored_right_eye = kp_a[PART_INDEX["right_eye"]] * torch.tensor([-1.0, 1.0])
            # iBUG eye contours run in the same image direction, so mirroring reverses them:
            # right eye (36..41) -> left eye (45, 44, 43, 42, 47, 46)
            order = torch.tensor([3, 2, 1, 0, 5, 4])
            torch.testing.assert_close(kp_b[PART_INDEX["left_eye"]], mirrored_right_eye[order])
            torch.testing.assert_close(getattr(b, role).image, getattr(a, role).image.flip(-1))
            torch.testing.assert_close(getattr(b, role).mask, getattr(a, role).mask.flip(-1))
            # the subject's left eye is now on the image's right, drawn in the left eye's colour
            assert kp_b[PART_INDEX["left_eye"], 0].mean() > 0
            x, y = (((kp_b[42] + kp_b[43]) / 2 + 1) / 2 * 128 - 0.5).round().long()
            window = getattr(b, role).landmark_image[:, y - 1 : y + 2, x - 1 : x + 2].reshape(3, -1)  # (3, 9)
            assert ((window[2] > 0.3) & (window[0] < -0.5)).any()  # blue (0, 0, 255), not red


def test_colour_transform_keeps_greys_and_turns_hues():
    red, grey = np.array([1.0, 0, 0]), np.full(3, 0.4)
    np.testing.assert_allclose(hue_rotation(120) @ red, [0, 1, 0], atol=1e-12)  # R -> G -> B
    np.testing.assert_allclose(hue_rotation(-120) @ red, [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(hue_rotation(37) @ grey, grey, atol=1e-12)
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(color_matrix(rng, 0, 0, 0), np.eye(3), atol=1e-12)
    for _ in range(20):  # a grey pixel stays grey, only its brightness changes; luma follows the gain
        m = color_matrix(rng, 90, 0.5, 0.3)
        out = m @ grey
        np.testing.assert_allclose(out, out.mean(), atol=1e-12)
        assert 0.7 * 0.4 - 1e-9 <= out.mean() <= 1.3 * 0.4 + 1e-9
    for _ in range(20):  # saturation alone keeps every colour's luma
        np.testing.assert_allclose(LUMA @ color_matrix(rng, 0, 0.9, 0), LUMA, atol=1e-12)


def test_colour_jitter_is_one_transform_for_both_frames_and_never_on_test(dataset_dir):
    same_frame = DatasetConfig(split="all", test_fraction=0, min_gap=0, max_gap=0, flip_probability=0.5)
    plain = PairDataset(dataset_dir, same_frame, image_size=64, seed=4)
    jitter = replace(same_frame, hue_jitter=180, saturation_jitter=0.5, brightness_jitter=0.3)
    jittered = PairDataset(dataset_dir, jitter, image_size=64, seed=4)
    for i in range(len(plain)):
        a, b = plain[i], jittered[i]
        assert not torch.allclose(b.source.image, a.source.image, atol=0.05)
        torch.testing.assert_close(b.source.image, b.target.image)  # same frame, same transform
        assert -1 <= b.source.image.min() and b.source.image.max() <= 1
        for frame_a, frame_b in zip(a, b):  # the pair, the flip, keypoints, landmark images and masks as without it
            for name in ("landmark_image", "keypoints", "mask"):
                torch.testing.assert_close(getattr(frame_b, name), getattr(frame_a, name))
    test = PairDataset(dataset_dir, replace(jitter, split="test", test_fraction=1), image_size=64, seed=4)
    untouched = PairDataset(dataset_dir, replace(same_frame, split="test", test_fraction=1), image_size=64, seed=4)
    for i in range(len(test)):
        torch.testing.assert_close(test[i].source.image, untouched[i].source.image)
    with pytest.raises(ValueError, match="hue_jitter"):
        DatasetConfig(hue_jitter=200)


def test_dataset_config_is_a_typed_config():
    from bilayer.config import ConfigError, from_dict

    assert from_dict(DatasetConfig, {"split": "all", "max_gap": 10}).max_gap == 10
    with pytest.raises(ConfigError):
        from_dict(DatasetConfig, {"min_gap": 5, "max_gap": 2})
    with pytest.raises(ConfigError):
        from_dict(DatasetConfig, {"image_size": 64})  # the model's, not the dataset's
    with pytest.raises(ConfigError):
        from_dict(DatasetConfig, {"split": "val"})
