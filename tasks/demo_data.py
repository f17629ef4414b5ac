"""Deterministic synthetic detection dataset written in COCO `instances` format.

Scenes of coloured shapes (six classes) on textured, noisy or gradient backgrounds, with
distractor strokes, partial occlusion and overlap. Every image is drawn from its own seeded
generator (seed, split, index), so one split can be regenerated alone and always gives the same
pixels and annotations.

Category ids are deliberately not 0..N-1 so that the class-index -> category-id map is exercised.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tasks.run.rundir import atomic_write_text

CATEGORIES: list[dict] = [
    {"id": 2, "name": "disc", "supercategory": "shape"},
    {"id": 5, "name": "triangle", "supercategory": "shape"},
    {"id": 11, "name": "rectangle", "supercategory": "shape"},
    {"id": 17, "name": "star", "supercategory": "shape"},
    {"id": 23, "name": "cross", "supercategory": "shape"},
    {"id": 42, "name": "hexagon", "supercategory": "shape"},
]

# Image-id ranges per split keep ids unique across splits, so a calibration image can never be
# mistaken for an evaluation image.
SPLIT_ID_BASE = {"train": 100_000, "val": 200_000, "calib": 300_000, "holdout": 400_000}

JPEG_QUALITY = 92
GENERATOR_VERSION = 3  # bump whenever the pixels or annotations a seed gives change


@dataclass(frozen=True)
class Profile:
    """How hard the scenes are. The random draws are the same in every profile (only their ranges
    differ), so a profile change never reshuffles what else an image holds."""

    noise: tuple[float, float]      # range of the Gaussian pixel-noise std
    dark_share: float               # share of dark objects (their colour says little)
    dark_factor: float
    min_size: float                 # smallest half-extent of an object, pixels
    max_size_frac: float            # largest half-extent, share of the image's short side
    max_objects: int
    max_overlap: float              # share of an earlier object's visible area a newcomer may cover
    blur_share: float
    blur: tuple[float, float]
    hue_spread: float | None        # None: any hue; else each class keeps a hue band (in 60-degree units)


PROFILES = {
    # The demo's distribution: what the bundled model is evaluated on.
    "standard": Profile(noise=(2, 8), dark_share=0.12, dark_factor=0.5, min_size=18, max_size_frac=0.25,
                        max_objects=7, max_overlap=0.25, blur_share=0.15, blur=(0.3, 0.8), hue_spread=0.35),
    # Harder scenes (darker, smaller, noisier, more occlusion): pre-training for the demo model.
    "hard": Profile(noise=(2, 12), dark_share=0.25, dark_factor=0.35, min_size=14, max_size_frac=0.22,
                    max_objects=8, max_overlap=0.35, blur_share=0.3, blur=(0.3, 1.2), hue_spread=None),
}


@dataclass(frozen=True)
class SplitSpec:
    name: str
    count: int


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    # crc32 of the split name: stable across Python runs, unlike hash().
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _background(rng: np.random.Generator, w: int, h: int, prof: Profile) -> np.ndarray:
    kind = rng.integers(0, 4)
    base = rng.uniform(40, 215, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # linear gradient
        other = rng.uniform(40, 215, size=3)
        ang = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(ang) + yy * math.sin(ang))
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
        img = base[None, None, :] * (1 - t[..., None]) + other[None, None, :] * t[..., None]
    elif kind == 1:  # stripes / waves texture
        period = rng.uniform(6, 30)
        ang = rng.uniform(0, math.pi)
        wave = np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period)
        img = base[None, None, :] + 25 * wave[..., None]
    elif kind == 2:  # blotchy low-frequency noise
        small = rng.uniform(-40, 40, size=(max(h // 32, 2), max(w // 32, 2), 3)).astype(np.float32)
        blot = np.asarray(Image.fromarray(((small + 128).clip(0, 255)).astype(np.uint8)).resize((w, h), Image.BILINEAR), np.float32) - 128
        img = base[None, None, :] + blot
    else:  # flat
        img = np.broadcast_to(base[None, None, :], (h, w, 3)).astype(np.float32)
    img = img + rng.normal(0, rng.uniform(*prof.noise), size=img.shape)
    return img.clip(0, 255).astype(np.uint8)


def _shape_points(cls: int, cx: float, cy: float, sx: float, sy: float, rot: float) -> list[tuple[float, float]]:
    """Polygon of class `cls` centred at (cx, cy), half-extents (sx, sy), rotated by `rot`."""
    if cls == 0:  # disc / ellipse
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif cls == 1:  # triangle
        t = np.array([-math.pi / 2, math.pi / 6, 5 * math.pi / 6])
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif cls == 2:  # rectangle
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    elif cls == 3:  # five-pointed star
        t = np.arange(10) * math.pi / 5 - math.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif cls == 4:  # cross
        a = 0.33
        pts = np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                        [-a, a], [-1, a], [-1, -a], [-a, -a]], float)
    else:  # hexagon
        t = np.arange(6) * math.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    pts = pts * np.array([sx, sy])
    c, s = math.cos(rot), math.sin(rot)
    pts = pts @ np.array([[c, s], [-s, c]])
    return [(float(x + cx), float(y + cy)) for x, y in pts]


def _polygon_area(pts: list[tuple[float, float]]) -> float:
    x, y = np.array(pts).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _saturated_colour(rng: np.random.Generator, prof: Profile, cls: int) -> tuple[int, int, int]:
    # Standard scenes give each class its own hue band (varied within it): a cue a small detector
    # learns in a CPU-sized training budget. Shape still decides between dark objects.
    hue = rng.uniform(0, 6) if prof.hue_spread is None else \
        (cls + rng.uniform(-prof.hue_spread, prof.hue_spread)) % 6
    i, f = int(hue) % 6, hue - int(hue)
    v, lo = rng.uniform(170, 255), rng.uniform(0, 60)
    table = [(v, lo + f * (v - lo), lo), (v - f * (v - lo), v, lo), (lo, v, lo + f * (v - lo)),
             (lo, v - f * (v - lo), v), (lo + f * (v - lo), lo, v), (v, lo, v - f * (v - lo))]
    if rng.random() < prof.dark_share:  # some dark objects too
        return tuple(int(c * prof.dark_factor) for c in table[i])  # type: ignore[return-value]
    return tuple(int(c) for c in table[i])  # type: ignore[return-value]


def render_scene(seed: int, split: str, index: int, profile: str = "standard") -> tuple[Image.Image, list[dict]]:
    """One image and its objects: [{'category_id', 'bbox' (xywh), 'area'}]."""
    prof = PROFILES[profile]
    rng = _rng(seed, split, index)
    w, h = int(rng.integers(288, 513)), int(rng.integers(224, 417))
    img = Image.fromarray(_background(rng, w, h, prof))
    draw = ImageDraw.Draw(img)
    owner = np.full((h, w), -1, np.int32)  # which object owns each visible pixel
    objects: list[dict] = []
    n_target = int(rng.integers(2, prof.max_objects + 1))
    for _ in range(n_target * 4):
        if len(objects) >= n_target:
            break
        cls = int(rng.integers(0, len(CATEGORIES)))
        size = rng.uniform(prof.min_size, min(w, h) * prof.max_size_frac)
        aspect = math.exp(rng.uniform(-0.45, 0.45))
        sx, sy = size * aspect, size / aspect
        cx, cy = rng.uniform(0.02 * w, 0.98 * w), rng.uniform(0.02 * h, 0.98 * h)
        pts = _shape_points(cls, cx, cy, sx, sy, rng.uniform(0, 2 * math.pi))
        mask_img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask_img).polygon(pts, fill=1)
        mask = np.asarray(mask_img, bool)
        # A shape cut to a fragment by the border can look like another class: keep >= 60 % in frame.
        if mask.sum() < 120 or mask.sum() < 0.6 * _polygon_area(pts):
            continue
        covered = owner[mask]
        ok = True
        for obj_i in np.unique(covered[covered >= 0]):
            if (covered == obj_i).sum() > prof.max_overlap * objects[obj_i]["_visible"]:
                ok = False
                break
        if not ok:
            continue
        draw.polygon(pts, fill=_saturated_colour(rng, prof, cls))
        owner[mask] = len(objects)
        objects.append({"category_id": CATEGORIES[cls]["id"], "_visible": int(mask.sum())})
    for _ in range(int(rng.integers(0, 6))):  # distractor strokes: thin lines and arcs
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.uniform(-w / 2, w / 2), y0 + rng.uniform(-h / 2, h / 2)
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
        else:
            box = [min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1]
            draw.arc(box, float(rng.uniform(0, 360)), float(rng.uniform(0, 360)), fill=colour, width=2)
    if rng.random() < prof.blur_share:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*prof.blur))))
    anns = []
    for i, obj in enumerate(objects):
        ys, xs = np.nonzero(owner == i)
        if len(xs) < 60:  # occluded or clipped into a sliver: not fairly detectable
            continue
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        anns.append({"category_id": obj["category_id"], "bbox": [x0, y0, x1 - x0, y1 - y0],
                     "area": float(len(xs))})
    return img, anns


def write_split(root: Path, split: str, count: int, seed: int = 0, annotate: bool = True,
                profile: str = "standard") -> Path:
    """Write `count` images to root/split/images and, if `annotate`, root/split/annotations.json.

    Returns the annotation path (or the image folder when `annotate` is False). Files are written
    under temporary names and renamed, so an interrupted run leaves no complete-looking split.
    """
    img_dir = root / split / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(count):
        image_id = SPLIT_ID_BASE[split] + i + 1
        file_name = f"{image_id:012d}.jpg"
        img, anns = render_scene(seed, split, i, profile)
        tmp = img_dir / f".{file_name}.tmp"
        img.save(tmp, format="JPEG", quality=JPEG_QUALITY)
        tmp.replace(img_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": img.width, "height": img.height})
        for a in anns:
            annotations.append({"id": ann_id, "image_id": image_id, "iscrowd": 0, "segmentation": [], **a})
            ann_id += 1
    if not annotate:
        return img_dir
    coco = {
        "info": {"description": f"yolo-lowbit synthetic shapes, split {split}, seed {seed}, profile {profile}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    out = root / split / "annotations.json"
    atomic_write_text(out, json.dumps(coco))
    return out


def ensure_demo_data(root: Path, seed: int = 0, val_count: int = 100, calib_count: int = 64) -> dict[str, Path]:
    """Generate the demo's evaluation and calibration splits once; reuse them when complete."""
    stamp = root / "COMPLETE.json"
    want = {"seed": seed, "val": val_count, "calib": calib_count, "generator": GENERATOR_VERSION,
            "profile": "standard"}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        write_split(root, "val", val_count, seed)
        write_split(root, "calib", calib_count, seed, annotate=False)
        atomic_write_text(stamp, json.dumps(want))
    return {
        "images": root / "val" / "images",
        "annotations": root / "val" / "annotations.json",
        "calib_images": root / "calib" / "images",
    }
