"""Calibration data: load and check a preprocessed tensor, or build one from images with the
evaluator's exact letterbox preprocessing."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tasks.preprocess import PreprocessSpec, list_images, preprocess_file
from tasks.rundir import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

_CHUNK = 8  # samples checked at a time, so a memory-mapped tensor is never read whole


class CalibrationError(ValueError):
    """Calibration data that does not fit the model; the message names the file and the fix."""


def _open_array(path: Path, input_name: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"calibration tensor {path} does not exist; pass --calib with a .npy/.npz file "
                                f"or --calib-images with a folder")
    if path.stat().st_size == 0:
        raise CalibrationError(f"calibration tensor {path} is empty (0 bytes); regenerate it")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            # Memory-mapped: a large tensor is paged in as samples are read, not loaded whole.
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if not keys:
                    raise CalibrationError(f"calibration archive {path} holds no arrays")
                key = input_name if input_name in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise CalibrationError(f"calibration archive {path} holds arrays {keys}; name one "
                                           f"{input_name!r} (the model input) or keep a single array")
                return z[key]
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise CalibrationError(f"calibration tensor {path} holds pickled objects, which are not loaded for "
                                   f"safety; save a plain float32 array with np.save(path, array)") from e
        raise CalibrationError(f"calibration tensor {path} cannot be read as a numpy array ({e}); "
                               f"save it with np.save / np.savez") from e
    except (OSError, EOFError) as e:
        raise CalibrationError(f"calibration tensor {path} is truncated or corrupt ({e}); regenerate it") from e
    raise CalibrationError(f"calibration file {path} must be .npy or .npz, not {suffix or 'no suffix'}")


def check_calib_array(arr: np.ndarray, input_shape: Sequence[int], spec: PreprocessSpec, name: str) -> dict[str, Any]:
    """Shape, dtype, finiteness and value range against the model input; returns simple stats."""
    _, c, h, w = input_shape
    if arr.ndim != 4:
        raise CalibrationError(f"calibration tensor {name} has rank {arr.ndim} (shape {list(arr.shape)}); "
                               f"expected N x {c} x {h} x {w}")
    if arr.shape[0] == 0:
        raise CalibrationError(f"calibration tensor {name} holds no samples (N = 0)")
    if tuple(arr.shape[1:]) != (c, h, w):
        hint = " (it looks NHWC: transpose to NCHW)" if tuple(arr.shape[1:]) == (h, w, c) else ""
        raise CalibrationError(f"calibration tensor {name} has samples of shape {list(arr.shape[1:])}; the model "
                               f"input needs {c} x {h} x {w}{hint}")
    if arr.dtype != np.float32:
        hint = " (uint8 pixels: letterbox, then divide by 255)" if arr.dtype == np.uint8 else \
            " (convert with .astype(np.float32))"
        raise CalibrationError(f"calibration tensor {name} is {arr.dtype}; the model input is float32{hint}")
    lo, hi = np.inf, -np.inf
    for i in range(0, arr.shape[0], _CHUNK):
        block = np.asarray(arr[i:i + _CHUNK])
        if not np.isfinite(block).all():
            bad = i + int(np.argwhere(~np.isfinite(block).reshape(len(block), -1).all(1))[0, 0])
            raise CalibrationError(f"calibration tensor {name} has NaN or Inf values (first in sample {bad}); "
                                   f"fix the preprocessing that produced it")
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    full_scale = 255.0 * spec.scale
    if hi > 1.5 * full_scale:
        raise CalibrationError(f"calibration tensor {name} has values up to {hi:.4g}, but the model expects pixels "
                               f"scaled to [0, {full_scale:g}]: it looks un-normalised (0-255); divide by 255")
    if lo < -0.05 * full_scale:
        raise CalibrationError(f"calibration tensor {name} has values down to {lo:.4g}; the model expects "
                               f"[0, {full_scale:g}] (letterbox, /255, no mean/std normalisation)")
    if hi - lo < 1e-6:
        raise CalibrationError(f"calibration tensor {name} is constant ({lo:.4g}); it cannot calibrate anything")
    return {"min": lo, "max": hi}


def load_calib_tensor(path: Path, input_name: str, input_shape: Sequence[int], spec: PreprocessSpec) -> tuple[np.ndarray, dict[str, Any]]:
    path = Path(path)
    arr = _open_array(path, input_name)
    stats = check_calib_array(arr, input_shape, spec, str(path))
    info = {"source": "tensor", "path": str(path), "sha256": sha256_file(path), "count": int(arr.shape[0]),
            "shape": list(arr.shape), "value_range": [stats["min"], stats["max"]], "order": "as stored",
            "images": []}
    return arr, info


def pick_calib_images(folder: Path, count: int, seed: int) -> list[Path]:
    files = list_images(folder)
    if count > len(files):
        log.warning("asked for %d calibration images but %s holds %d; using all of them", count, folder, len(files))
        count = len(files)
    # Seeded order: entropy calibration depends on sample order, so the order is part of the record.
    idx = np.random.default_rng(seed).permutation(len(files))[:count]
    return [files[i] for i in idx]


def check_overlap(calib_files: Sequence[Path], eval_files: Sequence[Path], allow: bool) -> list[str]:
    """Calibration images that are also evaluated (by content, so copies are caught too)."""
    eval_hashes = {sha256_file(p): p.name for p in eval_files}
    overlap = [p.name for p in calib_files if sha256_file(p) in eval_hashes]
    if overlap and not allow:
        raise CalibrationError(f"{len(overlap)} calibration images are also in the evaluated subset "
                               f"(first: {overlap[:3]}); this inflates INT8 figures. Use a disjoint folder or "
                               f"pass --allow-calib-overlap")
    return overlap


def build_calib_tensor(files: Sequence[Path], input_shape: Sequence[int], spec: PreprocessSpec) -> np.ndarray:
    _, c, h, w = input_shape
    out = np.empty((len(files), c, h, w), dtype=np.float32)
    for i, p in enumerate(files):
        out[i], _ = preprocess_file(p, (h, w), spec)
    return out


def save_npy(path: Path, arr: np.ndarray) -> str:
    """Atomic .npy write; returns its sha256."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    return sha256_file(path)
