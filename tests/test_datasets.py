"""Dataset layouts (DAVIS, Vivim/VTUS), clip sampling, transforms and every one-line error case."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from vivim.constants import IMAGENET_MEAN, IMAGENET_STD
from vivim.data.clips import clip_indices
from vivim.data.dataset import ClipDataset
from vivim.data.image_io import read_frame, read_mask
from vivim.data.layouts import discover_videos, list_frame_files, split_by_video
from vivim.data.synth_dataset import write_synthetic_dataset
from vivim.data.transforms import TrainAugment
from vivim.errors import VivimError


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    write_synthetic_dataset(root, videos=3, frames=6, size=48, seed=1, mp4=False, sheet=False)
    return root


@pytest.fixture(scope="module")
def vtus(tmp_path_factory):
    root = tmp_path_factory.mktemp("vtus")
    write_synthetic_dataset(root, videos=3, frames=4, size=48, seed=2, layout="vtus", test_fraction=0.34, mp4=False, sheet=False)
    return root


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------ clip sampling


def _expected_clip(i, n, t, mode):
    # definition written out independently: centre = i at position t//2, newest = i last, clamp to [0, n-1]
    first = i - t // 2 if mode == "centre" else i - (t - 1)
    return [min(max(j, 0), n - 1) for j in range(first, first + t)]


@pytest.mark.parametrize("mode", ["centre", "newest"])
@pytest.mark.parametrize("t", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [1, 2, 7])
def test_clip_indices_all_frames(mode, t, n):
    for i in range(n):
        assert clip_indices(i, n, t, mode) == _expected_clip(i, n, t, mode)


def test_clip_indices_at_video_ends():
    assert clip_indices(0, 10, 5, "centre") == [0, 0, 0, 1, 2]
    assert clip_indices(9, 10, 5, "centre") == [7, 8, 9, 9, 9]
    assert clip_indices(0, 10, 5, "newest") == [0, 0, 0, 0, 0]
    assert clip_indices(1, 10, 5, "newest") == [0, 0, 0, 0, 1]
    assert clip_indices(9, 10, 5, "newest") == [5, 6, 7, 8, 9]
    with pytest.raises(IndexError):
        clip_indices(10, 10, 5)


# ------------------------------------------------------------------------------------------ layouts


def test_davis_layout_discovery(davis):
    videos = discover_videos(davis)
    assert [v.name for v in videos] == ["synth_0000", "synth_0001", "synth_0002"]
    assert all(len(v) == 6 for v in videos)
    assert [p.stem for p in videos[0].masks] == [p.stem for p in videos[0].frames]


def test_vtus_layout_train_and_test_are_separate(vtus):
    train = discover_videos(vtus, "train")
    test = discover_videos(vtus, "test")
    assert [v.name for v in train] == ["0000", "0001"] and [v.name for v in test] == ["0002"]
    assert all("Train" in str(v.frames[0]) and "Train_GT" in str(v.masks[0]) for v in train)
    assert len(discover_videos(vtus, "all")) == 3


def test_davis_2017_resolution_folder_and_imagesets(tmp_path, davis):
    root = tmp_path / "DAVIS"
    for top in ("JPEGImages", "Annotations"):
        shutil.copytree(davis / top, root / top / "480p")
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/train.txt").write_text("synth_0000\nsynth_0002\n")
    (root / "ImageSets/2017/val.txt").write_text("synth_0001\n")
    assert [v.name for v in discover_videos(root, "train")] == ["synth_0000", "synth_0002"]
    assert [v.name for v in discover_videos(root, "val")] == ["synth_0001"]
    assert len(discover_videos(root, "all")) == 3
    assert "480p" in str(discover_videos(root, "val")[0].masks[0])
    (root / "ImageSets/2016").mkdir()
    (root / "ImageSets/2016/val.txt").write_text("synth_0000\nsynth_0002\n")  # an older year's list: the latest wins
    assert [v.name for v in discover_videos(root, "val")] == ["synth_0001"]
    (root / "ImageSets/2017/val.txt").write_text("synth_0001\nsynth_9999\n")  # a video that is not on disk
    with pytest.raises(VivimError, match=r"val.txt: 1 listed video\(s\) not in .* \(e.g. synth_9999\)"):
        discover_videos(root, "val")
    with pytest.raises(VivimError, match=r"no test.txt list \(lists: train, val\); pass --split train / val / all"):
        discover_videos(root, "test")  # lists exist, none for this split: not silently every video
    with pytest.raises(VivimError, match="is a file, not a dataset folder"):
        discover_videos(root / "ImageSets/2017/val.txt")


def test_frames_sort_numerically(tmp_path, davis):
    root = _copy(davis, tmp_path)
    video = root / "JPEGImages/synth_0000"
    for p in sorted(video.glob("*.jpg")):  # 00000.jpg -> 0.jpg ... so '10' would sort before '2' as text
        p.rename(video / f"{int(p.stem)}.jpg")
    ann = root / "Annotations/synth_0000"
    for p in sorted(ann.glob("*.png")):
        p.rename(ann / f"{int(p.stem)}.png")
    (video / "5.jpg").rename(video / "10.jpg")
    (ann / "5.png").rename(ann / "10.png")
    names = [p.name for p in discover_videos(root)[0].frames]
    assert names == ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg", "10.jpg"]


def test_split_by_video_is_by_whole_videos(davis):
    videos = discover_videos(davis)
    train, val = split_by_video(videos, 0.34, seed=3)
    assert len(val) == 1 and len(train) == 2
    assert not {v.name for v in train} & {v.name for v in val}
    assert split_by_video(videos, 0.34, seed=3)[1][0].name == val[0].name  # deterministic


@pytest.mark.parametrize("count, fraction", [(9, 0.2), (7, 0.3), (10, 0.27), (5, 0.1), (3, 0.9)])
def test_validation_share_is_the_nearest_whole_number_of_videos(count, fraction):
    from vivim.data.layouts import VideoRecord

    videos = [VideoRecord(f"v{k}", [], []) for k in range(count)]
    train, val = split_by_video(videos, fraction, seed=int(np.random.default_rng().integers(1000)))
    expected = min(count - 1, max(1, int(fraction * count + 0.5)))  # at least one, and one left to train on
    assert len(val) == expected and len(train) == count - expected
    assert sorted(v.name for v in train + val) == sorted(v.name for v in videos)


# ------------------------------------------------------------------------------------------ dataset items


def _unnormalise(clip):
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (clip * std + mean) * 255.0


@pytest.mark.parametrize("mode", ["centre", "newest"])
def test_items_hold_the_right_frames_and_mask(davis, mode):
    videos = discover_videos(davis)
    ds = ClipDataset(videos, frames=3, size=32, output_frame=mode)
    assert len(ds) == 18
    for idx in (0, 5, 7):
        item = ds[idx]
        assert item["clip"].shape == (3, 3, 32, 32) and item["clip"].dtype == torch.float32
        assert item["mask"].shape == (1, 32, 32)
        v, i = ds.samples[idx]
        assert item["video"] == videos[v].name and item["frame"] == i
        expected = _expected_clip(i, 6, 3, mode)
        for k, j in enumerate(expected):
            rgb = cv2.cvtColor(cv2.imread(str(videos[v].frames[j])), cv2.COLOR_BGR2RGB)
            ref = cv2.resize(rgb, (32, 32), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1).astype(np.float32)
            np.testing.assert_allclose(_unnormalise(item["clip"][k]).numpy(), ref, atol=1e-3)
        raw = cv2.imread(str(videos[v].masks[i]), cv2.IMREAD_GRAYSCALE) > 127
        soft = cv2.resize(raw.astype(np.float32), (32, 32), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(item["mask"][0].numpy(), soft, atol=1e-6)


def test_augmentation_is_clip_consistent_and_reproducible(davis):
    videos = discover_videos(davis)
    geometry_only = TrainAugment(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), sharpness=(1.0, 1.0), mask_noise=0.0)
    plain = ClipDataset(videos, frames=3, size=32)
    aug = ClipDataset(videos, frames=3, size=32, augment=geometry_only, seed=9)
    seen = set()
    for idx in range(len(aug)):
        a, p = aug[idx], plain[idx]
        ref_clip, ref_mask = p["clip"], p["mask"]
        # find the one flip combination that maps the plain clip to the augmented one; it must fit all frames + mask
        matches = []
        for flip_dims in ([], [-2], [-1], [-2, -1]):
            c = torch.flip(ref_clip, flip_dims) if flip_dims else ref_clip
            m = torch.flip(ref_mask, flip_dims) if flip_dims else ref_mask
            if torch.allclose(c, a["clip"], atol=0.05) and torch.allclose(m, a["mask"]):
                matches.append(tuple(flip_dims))
        assert matches, f"item {idx}: frames and mask were not transformed together"
        seen.add(matches[0])
    assert len(seen) > 1, "geometry changes between clips"
    # reproducible: the same item twice, and from a second dataset built with the same seed (another worker, a resume)
    again = ClipDataset(videos, frames=3, size=32, augment=geometry_only, seed=9)
    assert torch.equal(aug[4]["clip"], aug[4]["clip"]) and torch.equal(aug[4]["clip"], again[4]["clip"])
    aug.set_epoch(1)
    assert not all(torch.equal(aug[i]["clip"], ClipDataset(videos, frames=3, size=32, augment=geometry_only, seed=9)[i]["clip"]) for i in range(len(aug)))


def test_colour_jitter_differs_per_frame(davis):
    videos = discover_videos(davis)
    ds = ClipDataset(videos, frames=3, size=32, augment=TrainAugment(flip_p=0.0, rotate180_p=0.0, mask_noise=0.0), seed=0)
    item = ds[8]  # a middle frame: the 3 clip frames are different images, so compare mean-brightness ratios
    plain = ClipDataset(videos, frames=3, size=32)[8]
    ratios = [(_unnormalise(item["clip"][k]).mean() / _unnormalise(plain["clip"][k]).mean()).item() for k in range(3)]
    assert max(ratios) - min(ratios) > 0.02


def test_dataloader_batches(davis):
    ds = ClipDataset(discover_videos(davis), frames=3, size=32, augment=TrainAugment(), seed=0)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["clip"].shape == (4, 3, 3, 32, 32) and batch["mask"].shape == (4, 1, 32, 32)
    assert len(batch["video"]) == 4 and batch["frame"].tolist() == [0, 1, 2, 3]
    assert 0.0 <= batch["mask"].min() and batch["mask"].max() <= 1.0


def test_mask_reading_conventions(tmp_path):
    palette = Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    palette.save(tmp_path / "p.png")
    Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8)).save(tmp_path / "01.png")
    Image.fromarray(np.array([[0, 255], [100, 200]], np.uint8)).save(tmp_path / "255.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), [[False, True], [True, False]])
    np.testing.assert_array_equal(read_mask(tmp_path / "01.png"), [[False, True], [True, False]])
    np.testing.assert_array_equal(read_mask(tmp_path / "255.png"), [[False, True], [False, True]])


def test_mask_formats_users_bring(tmp_path):
    # Each way a binary lesion mask is commonly stored must read back as the same lesion
    rng = np.random.default_rng()
    lesion = rng.random((24, 32)) < 0.3
    u8 = lesion.astype(np.uint8)
    noise = rng.integers(-40, 41, lesion.shape)
    rgba_alpha_only = np.zeros((*lesion.shape, 4), np.uint8)
    rgba_alpha_only[..., 3] = u8 * 255
    red_opaque = np.zeros((*lesion.shape, 4), np.uint8)
    red_opaque[..., 0], red_opaque[..., 3] = u8 * 255, 255
    red_drawn_in_alpha = np.zeros((*lesion.shape, 4), np.uint8)  # a uniformly red layer, the lesion in its alpha
    red_drawn_in_alpha[..., 0], red_drawn_in_alpha[..., 3] = 255, u8 * 255
    green, blue = np.zeros((*lesion.shape, 3), np.uint8), np.zeros((*lesion.shape, 3), np.uint8)
    green[..., 1], blue[..., 2] = u8 * 255, u8 * 128
    formats = {
        "labels_0_2.png": Image.fromarray(u8 * 2),
        "labels_0_100.png": Image.fromarray(u8 * 100),
        "two_classes_0_1_2.png": Image.fromarray(u8 * rng.integers(1, 3, lesion.shape).astype(np.uint8)),
        "grey_alpha_marks_lesion.png": Image.fromarray(np.stack([np.full_like(u8, 255), u8 * 255], -1), "LA"),
        "grey_marks_lesion_opaque.png": Image.fromarray(np.stack([u8 * 255, np.full_like(u8, 255)], -1), "LA"),
        "rgba_alpha_only.png": Image.fromarray(rgba_alpha_only),
        "red_layer_alpha_marks_lesion.png": Image.fromarray(red_drawn_in_alpha),
        "red_on_black_opaque.png": Image.fromarray(red_opaque),
        "green_on_black.png": Image.fromarray(green),
        "dark_blue_on_black.png": Image.fromarray(blue),
        "u16_full_scale.png": Image.fromarray((lesion * 65535).astype(np.uint16)),
        "u16_0_255.png": Image.fromarray((lesion * 255).astype(np.uint16)),
        "noisy_0_255.png": Image.fromarray(np.clip(u8 * 255 + noise, 0, 255).astype(np.uint8)),
        "bilevel.png": Image.fromarray(lesion),
        "float_soft.tif": Image.fromarray(np.clip(lesion + noise / 100.0, 0, 1).astype(np.float32)),
    }
    for name, image in formats.items():
        image.save(tmp_path / name)
        np.testing.assert_array_equal(read_mask(tmp_path / name), lesion, err_msg=name)
    soft = cv2.GaussianBlur(u8 * 255.0, (5, 5), 1.5)  # anti-aliased edges, many levels
    for name, image, expected in [
        ("soft_edges_in_16_bit.png", Image.fromarray(soft.astype(np.uint16)), soft.astype(np.uint16) > 127),
        ("soft_edges_in_8_bit.png", Image.fromarray(soft.astype(np.uint8)), soft.astype(np.uint8) > 127),
    ]:
        image.save(tmp_path / name)
        np.testing.assert_array_equal(read_mask(tmp_path / name), expected, err_msg=name)
    # a 0/1 mask saved as JPEG: compression adds small values near the edges, none reach 128
    big = np.zeros((64, 64), np.uint8)
    big[16:48, 20:44] = 1
    Image.fromarray(big).save(tmp_path / "jpeg_0_1.jpg", quality=90)
    read = read_mask(tmp_path / "jpeg_0_1.jpg")
    assert (read & (big > 0)).sum() / (read | (big > 0)).sum() > 0.9
    # frames without a lesion, as each convention stores them
    transparent = np.zeros((*lesion.shape, 4), np.uint8)
    transparent[..., :3] = 255
    green_transparent = np.zeros((*lesion.shape, 4), np.uint8)
    green_transparent[..., 1] = 255
    empty = {
        "zeros.png": Image.fromarray(np.zeros_like(u8)),
        "white_fully_transparent.png": Image.fromarray(transparent),
        "green_fully_transparent.png": Image.fromarray(green_transparent),
        "grey_alpha_fully_transparent.png": Image.fromarray(np.stack([np.full_like(u8, 255), np.zeros_like(u8)], -1), "LA"),
        "black_opaque.png": Image.fromarray(np.dstack([np.zeros((*lesion.shape, 3), np.uint8), np.full_like(u8, 255)])),
        "uniform_dim_grey.png": Image.fromarray(np.full_like(u8, 50)),
    }
    for name, image in empty.items():
        image.save(tmp_path / name)
        assert not read_mask(tmp_path / name).any(), name
    Image.fromarray(np.full_like(u8, 255)).save(tmp_path / "all_lesion.png")
    assert read_mask(tmp_path / "all_lesion.png").all()


def test_header_check_sees_frames_as_opencv_turns_them(tmp_path):
    from vivim.data.image_io import image_size, read_frame

    rng = np.random.default_rng()
    frame = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))  # 64 wide, 48 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": phones store portrait frames this way
    frame.save(tmp_path / "turned.jpg", exif=exif)
    height, width = read_frame(tmp_path / "turned.jpg").shape[:2]
    assert image_size(tmp_path / "turned.jpg", "frame") == (width, height) == (48, 64)


@pytest.mark.parametrize("pattern", ["{}", "frame_{}", "{}_us", "clip3_f{}_x2", "IMG{}.final"])
def test_frames_are_listed_in_number_order_wherever_the_number_is(tmp_path, pattern):
    rng = np.random.default_rng()
    numbers = sorted(rng.choice(200, size=12, replace=False) + 1)  # unpadded: name order would differ
    names = [pattern.format(n) + rng.choice([".png", ".jpg", ".PNG"]) for n in numbers]
    for i in rng.permutation(len(names)):  # creation order must not matter either
        (tmp_path / names[i]).write_bytes(b"")
    assert [p.name for p in list_frame_files(tmp_path)] == names


def test_masks_of_any_image_type_pair_with_their_frames(tmp_path, davis):
    root = _copy(davis, tmp_path)
    masks = sorted((root / "Annotations/synth_0001").glob("*.png"))
    for mask, suffix in zip(masks, [".PNG", ".tif", ".bmp", ".png"]):
        if suffix != ".png":
            cv2.imwrite(str(mask.with_suffix(suffix)), cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE))
            mask.unlink()
    video = next(v for v in discover_videos(root) if v.name == "synth_0001")
    assert [m.stem for m in video.masks] == [f.stem for f in video.frames]
    assert [m.suffix for m in video.masks[:4]] == [".PNG", ".tif", ".bmp", ".png"]
    reference = discover_videos(davis)[[v.name for v in discover_videos(davis)].index("synth_0001")]
    for ours, original in zip(video.masks, reference.masks):
        np.testing.assert_array_equal(read_mask(ours), read_mask(original))


# ------------------------------------------------------------------------------------------ errors


def _error(fn) -> str:
    with pytest.raises(VivimError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_error_missing_folder_and_unknown_layout(tmp_path):
    assert str(tmp_path / "nope") in _error(lambda: discover_videos(tmp_path / "nope"))
    (tmp_path / "random").mkdir()
    assert "not a dataset folder" in _error(lambda: discover_videos(tmp_path / "random"))
    assert "--split" in _error(lambda: discover_videos(tmp_path / "random", "dev"))


def test_error_missing_mask(tmp_path, davis):
    root = _copy(davis, tmp_path)
    missing = root / "Annotations/synth_0001/00003.png"
    missing.unlink()
    assert str(missing) in _error(lambda: discover_videos(root))


def test_error_missing_mask_folder(tmp_path, davis, vtus):
    root = _copy(davis, tmp_path)
    shutil.rmtree(root / "Annotations/synth_0002")
    assert str(root / "Annotations/synth_0002") in _error(lambda: discover_videos(root))
    shutil.rmtree(root / "Annotations")
    assert "Annotations" in _error(lambda: discover_videos(root))
    assert "Val" in _error(lambda: discover_videos(vtus, "val"))


def test_error_empty_video_folder(tmp_path, vtus):
    root = _copy(vtus, tmp_path)
    for p in (root / "Train/0001").iterdir():
        p.unlink()
    assert str(root / "Train/0001") in _error(lambda: discover_videos(root, "train"))
    shutil.rmtree(root / "Test")
    (root / "Test").mkdir()
    assert str(root / "Test") in _error(lambda: discover_videos(root, "test"))


def test_error_size_mismatch(tmp_path, davis):
    root = _copy(davis, tmp_path)
    bad = root / "Annotations/synth_0000/00002.png"
    cv2.imwrite(str(bad), np.zeros((40, 48), np.uint8))
    ds = ClipDataset(discover_videos(root), frames=3, size=32)
    message = _error(lambda: ds[2])
    assert str(bad) in message and "48x40" in message


def test_error_unreadable_frame_and_mask(tmp_path, davis):
    root = _copy(davis, tmp_path)
    frame = root / "JPEGImages/synth_0000/00001.jpg"
    frame.write_bytes(b"not a jpeg")
    mask = root / "Annotations/synth_0001/00000.png"
    mask.write_bytes(b"not a png")
    ds = ClipDataset(discover_videos(root), frames=3, size=32)
    assert str(frame) in _error(lambda: ds[0])
    assert str(mask) in _error(lambda: ds[6])


def test_salt_and_pepper_flips_the_given_share_both_ways():
    from vivim.data.transforms import salt_and_pepper

    rng = np.random.default_rng()
    half = np.zeros((200, 300), bool)
    half[:, :150] = True
    noisy = salt_and_pepper(half, 0.05, rng)
    changed = noisy != half
    # 5 % of pixels drawn (with repeats), each set to 0 or 1 at random: about half of them change
    assert 0.015 < changed.mean() < 0.035
    assert changed[half].any() and changed[~half].any()  # pepper in the lesion, salt outside
    assert set(np.unique(noisy)) <= {0.0, 1.0}


def test_unnumbered_images_come_after_the_frames_and_dotted_indices_count_up(tmp_path):
    names = ["clip3.1.png", "clip3.2.png", "clip3.10.png", "clip3.12.png", "clip10.1.png", "f_99999999999999999.png",
             "f_100000000000000000.png", "cover.png", "notes.jpg"]
    for i in np.random.default_rng().permutation(len(names)):
        (tmp_path / names[i]).write_bytes(b"")
    assert [p.name for p in list_frame_files(tmp_path)] == names


def test_vtus_videos_of_several_split_folders_keep_apart(tmp_path, vtus):
    import shutil

    root = _copy(vtus, tmp_path)
    train_name = sorted(p.name for p in (root / "Train").iterdir())[0]
    for part in ("", "_GT"):  # a Test/ video with the same folder name as a Train/ one, and fewer frames
        target = root / f"Test{part}" / train_name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(root / f"Train{part}" / train_name, target)
        for extra in sorted(target.iterdir())[2:]:
            extra.unlink()
    videos = discover_videos(root, "all")
    names = [v.name for v in videos]
    assert len(names) == len(set(names)) and f"Train/{train_name}" in names and f"Test/{train_name}" in names
    assert len(videos[names.index(f"Test/{train_name}")]) == 2


# ------------------------------------------------------------------------------------------ sparse annotation


def _drop_random_masks(root, rng, keep_none: str | None = None) -> dict[str, set[int]]:
    """Delete a random share of the masks (at least one kept per video, except `keep_none`, which loses all);
    returns the frame indices still annotated, per video."""
    annotated = {}
    for folder in sorted((root / "Annotations").iterdir()):
        masks = sorted(folder.iterdir())
        if folder.name == keep_none:
            drop = set(range(len(masks)))
        else:
            drop = set(rng.choice(len(masks), size=rng.integers(1, len(masks)), replace=False).tolist())
        for i in drop:
            masks[i].unlink()
        annotated[folder.name] = set(range(len(masks))) - drop
    return annotated


def test_a_missing_mask_names_the_sparse_flag(tmp_path, davis):
    root = _copy(davis, tmp_path)
    (root / "Annotations/synth_0001/00003.png").unlink()
    assert "--sparse-masks" in _error(lambda: discover_videos(root))
    video = next(v for v in discover_videos(root, sparse=True) if v.name == "synth_0001")
    assert video.masks[3] is None and 3 not in video.annotated and len(video.annotated) == len(video) - 1


@pytest.mark.parametrize("sparse", [False, True])
def test_masks_named_after_no_frame_are_named_not_skipped(tmp_path, davis, sparse, capsys):
    # frames 00000.jpg..., masks renamed 00000_mask.png...: --sparse-masks would otherwise read a video with no mask
    root = _copy(davis, tmp_path)
    folder = root / "Annotations/synth_0001"
    for mask in sorted(folder.iterdir()):
        mask.rename(folder / f"{mask.stem}_mask{mask.suffix}")
    message = _error(lambda: discover_videos(root, sparse=sparse))
    count = len(list(folder.iterdir()))
    assert message.startswith(f"{folder}: none of its {count} mask images is named after a frame of 'synth_0001' "
                              "(e.g. 00000_mask.png; its frames are named like 00000.jpg)")
    # one stray image among matching masks (a preview, a trimmed frame's mask) is no reason to refuse the dataset:
    # read as before, and said once with --sparse-masks, where masks named another way would go unread
    root = _copy(davis, tmp_path / "one")
    folder = root / "Annotations/synth_0001"
    (folder / "preview.png").write_bytes((folder / "00003.png").read_bytes())
    capsys.readouterr()
    for _ in range(2):
        record = next(v for v in discover_videos(root, sparse=sparse) if v.name == "synth_0001")
        assert len(record.annotated) == len(record) == count
    said = capsys.readouterr().err
    expected = f"warning: {folder}: 1 mask image named after no frame of 'synth_0001' (e.g. preview.png) is not read"
    assert said.count(expected) == (1 if sparse else 0), said


@pytest.mark.parametrize("mode", ["centre", "newest"])
def test_sparse_samples_are_the_annotated_frames_with_the_same_clips(tmp_path, davis, mode):
    # reference: the fully annotated dataset; a sparse copy must give exactly its items at the kept frames, so the
    # clips still take the pixels of frames whose masks were removed
    seed = int(np.random.SeedSequence().entropy % 2**32)  # fresh each run, named in any failure
    root = _copy(davis, tmp_path)
    annotated = _drop_random_masks(root, np.random.default_rng(seed))
    full = ClipDataset(discover_videos(davis), frames=3, size=32, output_frame=mode)
    sparse = ClipDataset(discover_videos(root, sparse=True), frames=3, size=32, output_frame=mode)
    expected = [(v.name, i) for v in full.videos for i in range(len(v)) if i in annotated[v.name]]
    assert [(sparse.videos[v].name, i) for v, i in sparse.samples] == expected, f"seed {seed}"
    by_key = {(full.videos[v].name, i): k for k, (v, i) in enumerate(full.samples)}
    for k, key in enumerate(expected):
        mine, reference = sparse[k], full[by_key[key]]
        assert torch.equal(mine["clip"], reference["clip"]), f"seed {seed}, {key}"
        assert torch.equal(mine["mask"], reference["mask"]), f"seed {seed}, {key}"
        assert (mine["video"], mine["frame"]) == key


def test_sparse_set_with_no_mask_at_all_and_header_checks(tmp_path, davis):
    from vivim.data.layouts import check_headers

    root = _copy(davis, tmp_path)
    for mask in (root / "Annotations").glob("*/*.png"):
        mask.unlink()
    videos = discover_videos(root, sparse=True)
    assert all(not v.annotated for v in videos)
    assert "none of the 3 video(s) has a mask" in _error(lambda: ClipDataset(videos, frames=3, size=32))
    check_headers(videos)  # no masks: nothing to compare, and frames without one are no error
    shutil.rmtree(root)
    root = _copy(davis, tmp_path)
    (root / "Annotations/synth_0000/00001.png").unlink()
    bad = root / "Annotations/synth_0000/00002.png"
    cv2.imwrite(str(bad), np.zeros((40, 48), np.uint8))
    assert str(bad) in _error(lambda: check_headers(discover_videos(root, sparse=True)))  # still checked
    cv2.imwrite(str(bad), np.zeros((48, 48), np.uint8))
    unlabelled = root / "JPEGImages/synth_0000/00001.jpg"  # no mask, but it fills its neighbours' clips
    unlabelled.write_bytes(b"not a jpeg")
    assert str(unlabelled) in _error(lambda: check_headers(discover_videos(root, sparse=True)))


def test_cli_check_counts_annotated_frames(tmp_path, davis):
    from typer.testing import CliRunner

    from vivim.data.cli import app

    root = _copy(davis, tmp_path)
    annotated = _drop_random_masks(root, np.random.default_rng(), keep_none="synth_0002")
    runner = CliRunner()
    refused = runner.invoke(app, ["check", str(root)])
    assert isinstance(refused.exception, VivimError) and "--sparse-masks" in str(refused.exception)
    result = runner.invoke(app, ["check", str(root), "--sparse-masks"])
    assert result.exit_code == 0, result.output
    count = sum(len(kept) for kept in annotated.values())
    assert f"3 videos, 18 frames, {count} of them annotated (1 video(s) without any mask)" in result.output


def test_two_frames_or_masks_of_one_stem_are_refused_naming_both(tmp_path, davis):
    """00002.jpg beside 00002.png would share one mask; two masks of one frame, neither a .png (the annotation beside
    a .jpg preview), would leave the choice to the file names."""
    root = _copy(davis, tmp_path)
    frames = root / "JPEGImages" / "synth_0001"
    cv2.imwrite(str(frames / "00002.png"), np.zeros((48, 48, 3), np.uint8))
    assert f"{frames}: several frames are named 00002.* (00002.jpg, 00002.png); keep one of them" == \
        _error(lambda: discover_videos(root))
    (frames / "00002.png").unlink()
    masks = root / "Annotations" / "synth_0002"
    cv2.imwrite(str(masks / "00003.tif"), np.zeros((48, 48), np.uint8))
    assert next(v for v in discover_videos(root) if v.name == "synth_0002").masks[3].suffix == ".png"  # .png wins
    (masks / "00003.png").rename(masks / "00003.PNG")  # the extension in capitals is still the annotation
    assert next(v for v in discover_videos(root) if v.name == "synth_0002").masks[3].name == "00003.PNG"
    (masks / "00003.PNG").rename(masks / "00003.bmp")
    assert f"{masks}: several masks are named 00003.* (00003.bmp, 00003.tif) and none is a .png" in \
        _error(lambda: discover_videos(root))


def test_a_folder_that_is_not_a_dataset_says_what_it_looks_like(tmp_path, davis):
    """The folders people pass by mistake: a layout's own subfolder, a folder of videos, one video's frames."""
    root = _copy(davis, tmp_path)
    inner = root / "JPEGImages"
    assert _error(lambda: discover_videos(inner)).endswith(f"; this is the JPEGImages/ folder of one: pass its parent {root}")
    videos = tmp_path / "my videos"
    videos.mkdir()
    (videos / "case1.mp4").write_bytes(b"")
    assert f"it holds video files: vivim-data import '{videos}' --masks MASKS -o DATASET" in \
        _error(lambda: discover_videos(videos))
    one = root / "JPEGImages" / "synth_0000"
    assert _error(lambda: discover_videos(one)).endswith("; it holds the frames of one video, which go in "
                                                         "JPEGImages/<video>/ (masks in Annotations/<video>/)")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(lambda: discover_videos(empty)).endswith("(expected JPEGImages/ + Annotations/, or Train/ + Train_GT/)")


def test_cli_check_warns_when_every_mask_is_empty(tmp_path, davis):
    """Masks that encode the lesion in a way the reader does not take read as empty: training would learn nothing."""
    from typer.testing import CliRunner

    from vivim.data.cli import app

    root = _copy(davis, tmp_path)
    masks = sorted((root / "Annotations").rglob("*.png"))
    for mask in masks:
        cv2.imwrite(str(mask), np.zeros(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE).shape, np.uint8))
    result = CliRunner().invoke(app, ["check", str(root)])
    assert result.exit_code == 0, result.output
    assert f"warning: {root}: every one of the {len(masks)} masks is empty" in result.output


def test_colour_jitter_is_the_pil_enhance_chain():
    """Properties of the released loader's PIL chain that the earlier float version broke or only approximated."""
    from vivim.data.transforms import colour_jitter

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    assert np.array_equal(colour_jitter(image, 1.0, 1.0, 1.0, 1.0), image)  # factor 1 everywhere: untouched
    assert not colour_jitter(image, 0.0, 1.0, 1.0, 1.0).any()  # brightness 0: black
    grey = colour_jitter(image, 1.0, 1.0, 0.0, 1.0)  # colour 0: each pixel its own grey level
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    sharp = colour_jitter(image, 1.0, 1.0, 1.0, 3.0)  # PIL's smoothing filter leaves the border pixels as they are
    assert np.array_equal(sharp[0], image[0]) and np.array_equal(sharp[-1], image[-1])
    assert np.array_equal(sharp[:, 0], image[:, 0]) and np.array_equal(sharp[:, -1], image[:, -1])
    assert not np.array_equal(sharp[1:-1, 1:-1], image[1:-1, 1:-1])
    # brightness saturates before contrast sees the image: a bright 200 and a 255 end up alike
    flat = np.full((8, 8, 3), 200, np.uint8)
    flat[:4] = 255
    out = colour_jitter(flat, 1.5, 0.5, 1.0, 1.0)
    assert np.array_equal(out[0], out[-1])


def test_frames_are_read_in_rgb_order(tmp_path):
    """The model was trained on RGB frames normalised with ImageNet's RGB statistics: a BGR frame would swap red and
    blue, and a red lesion on ultrasound colour Doppler would look blue to the model."""
    from vivim.data.image_io import read_frame

    red_bgr = np.zeros((6, 8, 3), np.uint8)
    red_bgr[..., 2] = 255  # OpenCV writes BGR: this file is pure red
    cv2.imwrite(str(tmp_path / "red.png"), red_bgr)
    red = read_frame(tmp_path / "red.png")
    assert red.shape == (6, 8, 3) and red.dtype == np.uint8
    assert (red[..., 0] == 255).all() and (red[..., 1:] == 0).all()
    rgb = np.random.default_rng().integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "random.png")  # PIL writes RGB, PNG is lossless
    np.testing.assert_array_equal(read_frame(tmp_path / "random.png"), rgb)


def test_a_png_mask_wins_over_another_image_of_the_same_name(tmp_path, davis):
    """Folders often hold a lossless .png mask beside a .jpg preview of it: the .png is the annotation to train
    and score on, whatever order the folder lists them in."""
    root = _copy(davis, tmp_path)
    folder = root / "Annotations/synth_0002"
    for mask in sorted(folder.glob("*.png")):
        inverted = 255 - cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)  # a different, stale picture
        cv2.imwrite(str(mask.with_suffix(".jpg")), inverted)
    video = next(v for v in discover_videos(root) if v.name == "synth_0002")
    assert [m.suffix for m in video.masks] == [".png"] * len(video.frames)
    assert [m.stem for m in video.masks] == [f.stem for f in video.frames]
    reference = next(v for v in discover_videos(davis) if v.name == "synth_0002")
    for ours, original in zip(video.masks, reference.masks):
        np.testing.assert_array_equal(read_mask(ours), read_mask(original))


def test_an_empty_frame_or_mask_file_says_it_is_empty(tmp_path):
    """A copy cut short leaves 0-byte files: the message says so, not only the decoder's error type."""
    from vivim.data.image_io import image_size

    empty = tmp_path / "00003.png"
    empty.write_bytes(b"")
    assert _error(lambda: read_mask(empty)) == f"{empty}: cannot decode this mask (the file is empty)"
    assert _error(lambda: read_frame(empty)) == f"{empty}: cannot decode this frame (the file is empty)"
    assert _error(lambda: image_size(empty, "frame")) == f"{empty}: cannot decode this frame (the file is empty)"
    junk = tmp_path / "00004.png"
    junk.write_bytes(b"not an image")
    assert _error(lambda: read_mask(junk)) == f"{junk}: cannot decode this mask (UnidentifiedImageError)"
