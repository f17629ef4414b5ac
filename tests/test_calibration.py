import pickle
import re

import numpy as np
import pytest

from tasks.quantization.calibration import (CalibrationError, CalibReader, NpySampleReader, build_calib_tensor, check_overlap,
                               load_calib_tensor, open_reader, pick_calib_images, write_calib_npy)
from tasks.evaluation.preprocess import PreprocessSpec

SHAPE = (1, 3, 64, 64)
SPEC = PreprocessSpec()


def _save(tmp_path, arr, name="c.npy"):
    p = tmp_path / name
    np.save(p, arr)
    return p


def test_good_tensor_is_read_by_samples_not_loaded(tmp_path):
    a = np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)
    p = _save(tmp_path, a)
    arr, info = load_calib_tensor(p, "images", SHAPE, SPEC)
    assert isinstance(arr, NpySampleReader) and not isinstance(arr, np.ndarray)
    assert info["count"] == 5 and info["shape"] == [5, 3, 64, 64] and len(info["sha256"]) == 64
    np.testing.assert_array_equal(arr[1:3], a[1:3])
    np.testing.assert_array_equal(arr[4], a[4])


def test_truncated_npy_is_named(tmp_path):
    p = _save(tmp_path, np.random.default_rng(0).random((4, 3, 64, 64), dtype=np.float32))
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(CalibrationError, match="truncated"):
        load_calib_tensor(p, "images", SHAPE, SPEC)


def test_reader_protocol_order_and_rewind(tmp_path):
    a = np.arange(6, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 64, 64), np.float32) / 10
    r = open_reader(_save(tmp_path, a), "images")
    first = r.get_first()["images"]
    assert first.shape == (1, 3, 64, 64) and first[0, 0, 0, 0] == 0
    seen = []
    while (b := r.get_next()) is not None:  # get_first did not advance
        seen.append(round(float(b["images"][0, 0, 0, 0]) * 10))
    assert seen == [0, 1, 2, 3, 4, 5]
    r.rewind()
    assert r.get_next() is not None
    s1, s2 = r.with_seed(3), r.with_seed(3)
    assert s1.order == s2.order == np.random.default_rng(3).permutation(6).tolist() and s1.order != seen


def test_streamed_npy_equals_in_memory_build(tmp_path, tiny_data):
    files = sorted(tiny_data["calib_images"].iterdir())[:3]
    sha = write_calib_npy(tmp_path / "c.npy", files, SHAPE, SPEC)
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), build_calib_tensor(files, SHAPE, SPEC))
    assert len(sha) == 64 and sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "calib", "coco"]
    r = CalibReader(files, "images", input_shape=SHAPE, spec=SPEC)
    np.testing.assert_array_equal(r.get_next()["images"], np.load(tmp_path / "c.npy")[:1])


def test_npz_by_input_name_or_single_array(tmp_path):
    a = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    np.savez(tmp_path / "one.npz", a)
    np.savez(tmp_path / "named.npz", images=a, other=a[:1])
    np.savez(tmp_path / "two.npz", x=a, y=a)
    assert load_calib_tensor(tmp_path / "one.npz", "images", SHAPE, SPEC)[1]["count"] == 2
    assert load_calib_tensor(tmp_path / "named.npz", "images", SHAPE, SPEC)[1]["count"] == 2
    with pytest.raises(CalibrationError, match="name one 'images'"):
        load_calib_tensor(tmp_path / "two.npz", "images", SHAPE, SPEC)


@pytest.mark.parametrize("arr,match", [
    (np.zeros((3, 64, 64), np.float32), "rank 3"),
    (np.zeros((0, 3, 64, 64), np.float32), "no samples"),
    (np.zeros((2, 3, 32, 32), np.float32), "needs 3 x 64 x 64"),
    (np.zeros((2, 64, 64, 3), np.float32), "NHWC"),
    (np.zeros((2, 3, 64, 64), np.float64), "float64"),
    (np.full((2, 3, 64, 64), 200, np.uint8), "uint8 pixels"),
    (np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32) * 255, "un-normalised"),
    (np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32) - 0.5, "down to"),
    (np.full((2, 3, 64, 64), 0.5, np.float32), "constant"),
])
def test_bad_tensors(tmp_path, arr, match):
    with pytest.raises(CalibrationError, match=match):
        load_calib_tensor(_save(tmp_path, arr), "images", SHAPE, SPEC)


def test_nan_and_inf_name_the_sample(tmp_path):
    a = np.random.default_rng(0).random((12, 3, 64, 64), dtype=np.float32)
    a[10, 0, 5, 5] = np.nan
    with pytest.raises(CalibrationError, match="sample 10"):
        load_calib_tensor(_save(tmp_path, a), "images", SHAPE, SPEC)
    a[10, 0, 5, 5] = np.inf
    with pytest.raises(CalibrationError, match="NaN or Inf"):
        load_calib_tensor(_save(tmp_path, a, "inf.npy"), "images", SHAPE, SPEC)


def test_pickled_truncated_empty_missing_and_wrong_suffix(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CalibrationError, match="pickled"):
        load_calib_tensor(tmp_path / "obj.npy", "images", SHAPE, SPEC)
    good = _save(tmp_path, np.random.default_rng(0).random((4, 3, 64, 64), dtype=np.float32))
    (tmp_path / "trunc.npy").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CalibrationError, match="trunc.npy"):
        load_calib_tensor(tmp_path / "trunc.npy", "images", SHAPE, SPEC)
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(CalibrationError, match="empty"):
        load_calib_tensor(tmp_path / "empty.npy", "images", SHAPE, SPEC)
    with pytest.raises(FileNotFoundError, match="--calib-images"):
        load_calib_tensor(tmp_path / "missing.npy", "images", SHAPE, SPEC)
    (tmp_path / "c.pkl").write_bytes(pickle.dumps(1))
    with pytest.raises(CalibrationError, match=".npy or .npz"):
        load_calib_tensor(tmp_path / "c.pkl", "images", SHAPE, SPEC)


def test_images_are_sampled_with_seed_and_preprocessed_like_inference(tmp_path, tiny_data):
    a = pick_calib_images(tiny_data["calib_images"], 5, seed=3)
    assert a == pick_calib_images(tiny_data["calib_images"], 5, seed=3)
    assert len(set(a)) == 5
    x = build_calib_tensor(a, SHAPE, SPEC)
    assert x.shape == (5, 3, 64, 64) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert len(pick_calib_images(tiny_data["calib_images"], 8, seed=0)) == 8


def test_asking_for_more_calibration_images_than_the_folder_holds_is_refused(tiny_data):
    """Deployments reach the calibration step without the command line's check: it refuses too,
    rather than calibrating on fewer images than asked."""
    folder = tiny_data["calib_images"]
    with pytest.raises(CalibrationError, match=re.escape(f"--calib-count 100 asks for more images than calibration "
                                                         f"folder {folder} holds (8); pass --calib-count 8 or fewer")):
        pick_calib_images(folder, 100, seed=0)


def test_demo_calibration_count_fits_its_calibration_images():
    from tasks.config import load_demo_config

    demo = load_demo_config(generate=False)
    assert 1 <= demo["calib_count"] <= demo["data"]["calib_images"]


@pytest.mark.parametrize("kind", ["not-a-zip", "truncated", "member-not-npy"])
def test_damaged_archives_are_refused_by_name(tmp_path, kind):
    import zipfile

    p = tmp_path / "c.npz"
    if kind == "not-a-zip":
        p.write_bytes(b"PK\x03\x04 not really a zip")
    elif kind == "truncated":
        np.savez(p, images=np.zeros((2, 3, 64, 64), np.float32))
        p.write_bytes(p.read_bytes()[:300])
    else:
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("images.npy", b"not an array")
    with pytest.raises(CalibrationError, match=re.escape(str(p))):
        load_calib_tensor(p, "images", SHAPE, SPEC)


def test_overlap_with_evaluated_images_is_refused(tmp_path, tiny_data):
    evals = sorted(tiny_data["images"].iterdir())
    calib = sorted(tiny_data["calib_images"].iterdir())
    assert check_overlap(calib, evals, allow=False) == []
    copied = tmp_path / "copy.png"
    copied.write_bytes(evals[0].read_bytes())  # same bytes under another name
    with pytest.raises(CalibrationError, match="also in the evaluated subset"):
        check_overlap(calib + [copied], evals, allow=False)
    assert check_overlap(calib + [copied], evals, allow=True) == ["copy.png"]
