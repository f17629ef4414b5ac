"""Calibration data: load and check a preprocessed tensor, or build one from images with the
evaluator's exact letterbox preprocessing."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tasks.config import DEFAULT_CALIB_COUNT
from tasks.evaluation.preprocess import ImageError, PreprocessSpec, list_images, load_rgb, preprocess_file
from tasks.run.progress import ProgressFn
from tasks.run.rundir import atomic_writer, sha256_file

_CHUNK = 8  # samples checked at a time, so a memory-mapped tensor is never read whole


class CalibrationError(ValueError):
    """Calibration data that does not fit the model; the message names the file and the fix."""


def open_array(path: Path, input_name: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"calibration tensor {path} does not exist; pass --calib with a .npy/.npz file "
                                f"or --calib-images with a folder")
    if path.stat().st_size == 0:
        raise CalibrationError(f"calibration tensor {path} is empty (0 bytes); regenerate it")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            # The header is checked by numpy (mmap maps nothing until read); samples are then read
            # by file offsets, so a large tensor is never resident whole.
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.ndim == 4 and arr.dtype == np.float32 and arr.flags.c_contiguous:
                del arr
                return NpySampleReader(path)
            return arr
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if not keys:
                    raise CalibrationError(f"calibration archive {path} holds no arrays")
                key = input_name if input_name in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise CalibrationError(f"calibration archive {path} holds arrays {keys}; name one "
                                           f"{input_name!r} (the model input) or keep a single array")
                arr = z[key]
            if not isinstance(arr, np.ndarray):  # numpy hands back a member that is no .npy as raw bytes
                raise CalibrationError(f"calibration archive {path}: member {key!r} is not a numpy array; save the "
                                       f"archive with np.savez")
            return arr
    except CalibrationError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise CalibrationError(f"calibration tensor {path} holds pickled objects, which are not loaded for "
                                   f"safety; save a plain float32 array with np.save(path, array)") from e
        raise CalibrationError(f"calibration tensor {path} cannot be read as a numpy array ({e}); "
                               f"save it with np.save / np.savez") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise CalibrationError(f"calibration tensor {path} is truncated or corrupt ({e}); regenerate it") from e
    raise CalibrationError(f"calibration file {path} must be .npy or .npz, not {suffix or 'no suffix'}")


def check_calib_shape(arr: np.ndarray, input_shape: Sequence[int], name: str) -> None:
    """Shape and dtype against the model input (reads the header only)."""
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


def check_calib_array(arr: np.ndarray, input_shape: Sequence[int], spec: PreprocessSpec, name: str) -> dict[str, Any]:
    """Shape, dtype, finiteness and value range against the model input; returns simple stats."""
    check_calib_shape(arr, input_shape, name)
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
    arr = open_array(path, input_name)
    stats = check_calib_array(arr, input_shape, spec, str(path))
    info = {"source": "tensor", "path": str(path), "sha256": sha256_file(path), "count": int(arr.shape[0]),
            "shape": list(arr.shape), "value_range": [stats["min"], stats["max"]], "order": "as stored",
            "images": []}
    return arr, info



def list_calib_images(folder: Path, count: int | None) -> list[Path]:
    """The calibration folder's images, refused when it holds fewer than `count`: calibrating on fewer
    than asked would change the scales without a word. The run's input check and the calibration step
    (and the bench scripts, which call it without that check) apply this one rule. `count` None: the
    default count, or every image of a smaller folder."""
    files = list_images(folder, "--calib-images with a folder of images (or --calib with a tensor file)")
    check_count(files, count, f"calibration folder {folder}")
    return files


def check_count(files: Sequence[Path], count: int | None, where: str) -> None:
    """Refuse a calibration source (`where`: "calibration folder X", "the train split of Y") that holds
    fewer than `count` images."""
    if count is not None and count > len(files):
        raise CalibrationError(f"--calib-count {count} asks for more images than {where} holds ({len(files)}); "
                               f"pass --calib-count {len(files)} or fewer")


def pick_calib_images(folder: Path, count: int | None, seed: int) -> list[Path]:
    return pick_files(list_calib_images(folder, count), count, seed)


def pick_files(files: Sequence[Path], count: int | None, seed: int) -> list[Path]:
    """A seeded draw of `count` of `files` (default DEFAULT_CALIB_COUNT, or all of fewer), in the
    draw's order: entropy calibration depends on sample order, so the order is part of the record."""
    idx = np.random.default_rng(seed).permutation(len(files))[:count or DEFAULT_CALIB_COUNT]
    return [files[i] for i in idx]


def check_calib_images(files: Sequence[Path]) -> None:
    """Decode every calibration image the run will read, before any work: a file that does not decode
    would otherwise stop the calibration step half-way, after a server and a run folder exist."""
    for p in files:
        try:
            load_rgb(p)
        except ImageError as e:
            raise CalibrationError(f"calibration {e}; or pass --calib-images with a folder of images that "
                                   f"decode") from e


def check_overlap(calib_files: Sequence[Path], eval_files: Sequence[Path], allow: bool) -> list[str]:
    """Calibration images that are also evaluated (by content, so copies are caught too)."""
    eval_hashes = {sha256_file(p): p.name for p in eval_files}
    overlap = [p.name for p in calib_files if sha256_file(p) in eval_hashes]
    if overlap and not allow:
        raise CalibrationError(f"{len(overlap)} calibration images are also in the evaluated subset "
                               f"(first: {overlap[:3]}); this inflates INT8 figures. Use a disjoint folder or "
                               f"pass --set allow_calib_overlap=on")
    return overlap


def build_calib_tensor(files: Sequence[Path], input_shape: Sequence[int], spec: PreprocessSpec) -> np.ndarray:
    """The whole tensor in memory (tests and small sets; the flow streams with `write_calib_npy`)."""
    _, c, h, w = input_shape
    out = np.empty((len(files), c, h, w), dtype=np.float32)
    for i, p in enumerate(files):
        out[i], _ = preprocess_file(p, (h, w), spec)
    return out


def write_calib_npy(path: Path, files: Sequence[Path], input_shape: Sequence[int], spec: PreprocessSpec,
                    progress: ProgressFn | None = None) -> str:
    """Preprocess images one at a time straight into a .npy (temporary name, then renamed); returns
    its sha256. Memory stays at one sample however many images there are."""
    _, c, h, w = input_shape
    with atomic_writer(path) as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                "shape": (len(files), c, h, w)})
        buf = np.empty((c, h, w), np.float32)
        for k, p in enumerate(files, 1):
            buf[...] = preprocess_file(p, (h, w), spec)[0]
            f.write(buf.tobytes())
            if progress is not None:
                progress(k, len(files))
    return sha256_file(path)


class NpySampleReader:
    """Reads samples of an N x C x H x W float32 .npy by plain file reads, one at a time.

    Not a memory map on purpose: mapped pages that were read count as this process's resident
    memory until unmapped, so a mapped 512-sample tensor at 640 (2.5 GB) would show up whole."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran or dtype != np.float32 or len(shape) != 4:
            raise CalibrationError(f"calibration tensor {path} is not a C-ordered N x C x H x W float32 array")
        self.shape = tuple(int(d) for d in shape)
        self._count = int(np.prod(self.shape[1:]))
        if self.offset + self.shape[0] * self._count * 4 > self.path.stat().st_size:
            raise CalibrationError(f"calibration tensor {path} is shorter than its header says "
                                   f"({list(self.shape)}); it is truncated: regenerate it")

    def __len__(self) -> int:
        return self.shape[0]

    ndim = 4
    dtype = np.dtype(np.float32)

    def __getitem__(self, key: slice) -> np.ndarray:
        """Samples `key` (a slice) as one array, read from the file."""
        start, stop, step = key.indices(len(self)) if isinstance(key, slice) else (key, key + 1, 1)
        rows = [self.read(i) for i in range(start, stop, step)]
        if not rows:
            return np.empty((0, *self.shape[1:]), np.float32)
        out = np.concatenate(rows)
        return out if isinstance(key, slice) else out[0]

    def read(self, i: int) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(self.offset + i * self._count * 4)
            out = np.fromfile(f, dtype=np.float32, count=self._count)
        if out.size != self._count:
            raise CalibrationError(f"calibration tensor {self.path} is truncated at sample {i}; regenerate it")
        return out.reshape(1, *self.shape[1:])


class CalibReader:
    """ONNX Runtime / ModelOpt `CalibrationDataReader` over calibration samples, one batch of 1 at a time.

    `get_first` (ModelOpt's shape probe) does not advance; `rewind` starts again. The order is a
    seeded permutation when `seed` is given (entropy histograms depend on it) and storage order
    otherwise. Samples come from a `NpySampleReader`, an in-memory array, or image files
    preprocessed on the fly, so memory does not grow with the number of samples."""

    def __init__(self, source: "NpySampleReader | np.ndarray | Sequence[Path]", input_name: str,
                 seed: int | None = None, input_shape: Sequence[int] | None = None,
                 spec: PreprocessSpec | None = None) -> None:
        self.input_name = input_name
        self.source = source
        self._args = (input_shape, spec)
        if isinstance(source, (NpySampleReader, np.ndarray)):
            n = len(source)
        else:
            if input_shape is None or spec is None:
                raise ValueError("a reader over image files needs input_shape and spec")
            self._files, self._hw, self._spec = list(source), tuple(input_shape[2:]), spec
            n = len(self._files)
        self.order = (np.random.default_rng(seed).permutation(n) if seed is not None else np.arange(n)).tolist()
        self._pos = 0
        self.progress: ProgressFn | None = None  # called (samples read, total) as a calibrator reads

    def __len__(self) -> int:
        return len(self.order)

    def with_seed(self, seed: int | None) -> "CalibReader":
        """The same samples in another order (seeded permutation, or storage order for None)."""
        shape, spec = self._args
        other = CalibReader(self.source, self.input_name, seed=seed, input_shape=shape, spec=spec)
        other.progress = self.progress
        return other

    def _sample(self, i: int) -> np.ndarray:
        src = self.source
        if isinstance(src, NpySampleReader):
            return src.read(i)
        if isinstance(src, np.ndarray):
            return np.ascontiguousarray(src[i:i + 1], dtype=np.float32)
        return preprocess_file(self._files[i], self._hw, self._spec)[0][None]

    def get_first(self) -> dict[str, np.ndarray] | None:
        return {self.input_name: self._sample(self.order[0])} if self.order else None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.order):
            return None
        self._pos += 1
        sample = {self.input_name: self._sample(self.order[self._pos - 1])}
        if self.progress is not None:
            self.progress(self._pos, len(self.order))
        return sample

    def rewind(self) -> None:
        self._pos = 0


def open_samples(path: Path, input_name: str) -> "NpySampleReader | np.ndarray":
    """The samples of a calibration tensor file, sliceable: a C-ordered float32 .npy is read by file
    offsets, never whole; a .npz cannot be read in pieces, so its array is loaded."""
    return open_array(Path(path), input_name)


def open_reader(path: Path, input_name: str, seed: int | None = None) -> CalibReader:
    """A streaming `CalibrationDataReader` over a calibration tensor file."""
    return CalibReader(open_samples(path, input_name), input_name, seed=seed)
