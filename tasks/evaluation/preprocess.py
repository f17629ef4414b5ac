"""Letterbox preprocessing as Ultralytics does it, described by a small, explicit spec.

The same function feeds evaluation, calibration and smoke inference: a calibration tensor that is
preprocessed differently from inference calibrates the wrong ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class PreprocessSpec(BaseModel):
    """How an export expects its input. Defaults are Ultralytics' (YOLOv5/v8/v10/11)."""

    pad_value: int = Field(114, ge=0, le=255, description="grey level of the letterbox border")
    center: bool = Field(True, description="pad both sides equally (Ultralytics) or only right/bottom")
    channel_order: Literal["RGB", "BGR"] = Field("RGB", description="channel order the export expects")
    scale: float = Field(1 / 255, gt=0, description="multiplier from 0-255 pixels to model input")


@dataclass(frozen=True)
class Letterbox:
    """Where the original image sits inside the model input."""

    gain: float
    pad_x: float
    pad_y: float
    orig_w: int
    orig_h: int


class ImageError(ValueError):
    """An image that cannot be used; the message names the file."""


def list_images(folder: Path, option: str = "an existing folder of images") -> list[Path]:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"image folder {folder} is a file, not a folder; pass {option}")
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; pass {option}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB. Images are used as stored (no EXIF rotation, as COCO's annotations assume);
    grayscale, palette, RGBA and CMYK are converted to RGB."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist; check the image folder and the annotation's file_name")
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                # RGBA/LA: composite on black like OpenCV's imread would drop alpha; convert() does that.
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageError(f"image {path} cannot be decoded ({e}); replace or remove the file") from e


def letterbox(img: np.ndarray, size_hw: tuple[int, int], spec: PreprocessSpec,
              out: np.ndarray | None = None) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping aspect ratio so the image fits `size_hw`, pad, scale, HWC->CHW float32.

    `out` (3 x H x W float32) is filled in place when given: the evaluator reuses one buffer, since a
    fresh 5 MB array per image costs page faults comparable to the work itself."""
    h0, w0 = img.shape[:2]
    th, tw = size_hw
    gain = min(th / h0, tw / w0)
    nw, nh = int(round(w0 * gain)), int(round(h0 * gain))
    if (nw, nh) != (w0, h0):
        # cv2 INTER_LINEAR exactly as Ultralytics' LetterBox, so our inputs match the export's training.
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if spec.center:
        dw, dh = (tw - nw) / 2, (th - nh) / 2
        top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    else:
        top = left = 0
    if spec.channel_order == "BGR":
        img = img[..., ::-1]
    chw = np.empty((3, th, tw), dtype=np.float32) if out is None else out
    scale = np.float32(spec.scale)
    # Border and picture written straight into the float CHW buffer: no padded uint8 canvas.
    chw[:, :top, :] = spec.pad_value * scale
    chw[:, top + nh:, :] = spec.pad_value * scale
    chw[:, top:top + nh, :left] = spec.pad_value * scale
    chw[:, top:top + nh, left + nw:] = spec.pad_value * scale
    np.multiply(img.transpose(2, 0, 1), scale, out=chw[:, top:top + nh, left:left + nw], casting="unsafe")
    return chw, Letterbox(gain=gain, pad_x=float(left), pad_y=float(top), orig_w=w0, orig_h=h0)


def to_original(boxes_xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Map boxes from model-input pixels back to the original image, clipped to it."""
    b = boxes_xyxy.astype(np.float64, copy=True)
    b[:, [0, 2]] = (b[:, [0, 2]] - lb.pad_x) / lb.gain
    b[:, [1, 3]] = (b[:, [1, 3]] - lb.pad_y) / lb.gain
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, lb.orig_w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, lb.orig_h)
    return b


def to_letterbox(boxes_xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Inverse of `to_original` (without clipping): for tests and for drawing."""
    b = boxes_xyxy.astype(np.float64, copy=True)
    b[:, [0, 2]] = b[:, [0, 2]] * lb.gain + lb.pad_x
    b[:, [1, 3]] = b[:, [1, 3]] * lb.gain + lb.pad_y
    return b


def preprocess_file(path: Path, size_hw: tuple[int, int], spec: PreprocessSpec) -> tuple[np.ndarray, Letterbox]:
    return letterbox(load_rgb(path), size_hw, spec)
