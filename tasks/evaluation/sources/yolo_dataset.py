"""An Ultralytics detection dataset (`--data DATA.yaml --split val|test`): the dataset file resolved and
its YOLO label files read as Ultralytics 8.4 reads them (`check_det_dataset`, `img2label_paths`,
`verify_image_label` in ultralytics/data/utils.py; `BaseDataset.get_img_files`), then laid out as the
in-memory COCO form every source gives.

Hand-written, not a library's reader: supervision's `DetectionDataset.from_yolo` and globox's
`AnnotationSet.from_yolo_*` read neither `path` nor split lists, `.txt` lists or the images->labels
rule, and each accepts labels Ultralytics refuses (docs/your-data.md). Image sizes come from the file
headers (PIL opens lazily): checking a 5,000-image split decodes no image."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from tasks.evaluation.coco_eval import AnnotationError
from tasks.evaluation.sources.base import DataSpec, EvalData, coco_index

# Ultralytics 8.4's image suffixes (ultralytics/data/utils.py IMG_FORMATS): what a split folder lists.
IMG_FORMATS = {"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"}
# Ultralytics' tolerance on normalised coordinates (verify_image_label): up to 1% outside [0, 1], the
# rounding of converters that clip after rounding; beyond it the label is wrong, not rounded.
COORD_TOLERANCE = 0.01
_FIX = "fix the line, or remove the label file's image from the split"


@dataclass
class YoloDataset:
    """A dataset file, resolved."""

    file: Path
    root: Path
    root_how: str  # how `path` was resolved, for the report
    raw: dict[str, Any]  # the file's keys
    names: dict[int, str]
    names_given: bool  # False: only `nc` (names made up as class_i: nothing to check a model's names against)

    def split_entries(self, split: str) -> list[Path]:
        """The split's folders / .txt lists / image files, joined to the root as Ultralytics joins them."""
        value = self.raw.get(split)
        if not value:
            raise AnnotationError(f"dataset file {self.file} has no {split!r} split; add `{split}:` to it"
                                  + (", or pass --split with a split it has" if split != "train" else
                                     ", or pass --calib-images DIR to calibrate on another folder"))
        if isinstance(value, str):
            x = (self.root / value).resolve()
            if not x.exists() and value.startswith("../"):  # Ultralytics' second try for ../ entries
                x = (self.root / value[3:]).resolve()
            return [x]
        return [(self.root / str(v)).resolve() for v in value]


def read_dataset_file(path: Path) -> YoloDataset:
    """The dataset file checked and resolved: `path` (absolute; relative: from the working directory,
    else from the file's folder; absent: the file's folder), `names` (a list or {index: name}) against
    `nc`. Raises FileNotFoundError or AnnotationError naming the file and the fix."""
    path = Path(path)
    if path.is_dir():
        raise AnnotationError(f"dataset file {path} is a folder; pass --data with the dataset's YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist; pass --data with an Ultralytics dataset YAML")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise AnnotationError(f"dataset file {path} is not valid YAML ({' '.join(str(e).split())}); fix it") from e
    if not isinstance(raw, dict):
        raise AnnotationError(f"dataset file {path} is not a mapping of path, train, val, names; pass an Ultralytics "
                              f"dataset YAML")
    for key, kinds in (("path", (str,)), ("train", (str, list)), ("val", (str, list)), ("test", (str, list)),
                       ("names", (list, dict))):
        if raw.get(key) is not None and not isinstance(raw[key], kinds):
            raise AnnotationError(f"dataset file {path}: {key} is {type(raw[key]).__name__}, not "
                                  f"{' or '.join(k.__name__ for k in kinds)}; fix the file")
    names, given = _names(path, raw)
    root, how = _root(path, raw.get("path"))
    return YoloDataset(path, root, how, raw, names, given)


def _names(path: Path, raw: dict[str, Any]) -> tuple[dict[int, str], bool]:
    nc = raw.get("nc")
    if nc is not None:
        try:
            if float(nc) != int(float(nc)) or int(float(nc)) <= 0:
                raise ValueError
            nc = int(float(nc))
        except (TypeError, ValueError):
            raise AnnotationError(f"dataset file {path}: nc {nc!r} is not a positive whole number; fix it") from None
    names = raw.get("names")
    if names is None:
        if nc is None:
            raise AnnotationError(f"dataset file {path} has neither names nor nc; add `names:` with the class names")
        return {i: f"class_{i}" for i in range(nc)}, False
    if isinstance(names, list):
        out = {i: str(n) for i, n in enumerate(names)}
    else:
        try:
            out = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise AnnotationError(f"dataset file {path}: names has a key that is not a class index "
                                  f"({list(names)[:3]}...); use 0: name, 1: name, ...") from None
        if sorted(out) != list(range(len(out))):
            raise AnnotationError(f"dataset file {path}: names' indices {sorted(out)[:6]}... are not 0..{len(out) - 1}; "
                                  f"number the classes from 0 without gaps")
    if not out:
        raise AnnotationError(f"dataset file {path}: names is empty; list the class names")
    if nc is not None and nc != len(out):
        raise AnnotationError(f"dataset file {path}: nc is {nc} but names lists {len(out)} classes; make them agree "
                              f"(or drop nc)")
    return dict(sorted(out.items())), True


def _root(path: Path, value: str | None) -> tuple[Path, str]:
    if not value:
        return path.parent.resolve(), "the dataset file's folder (no `path` key)"
    p = Path(value).expanduser()
    if p.is_absolute():
        return p, "absolute"
    if p.exists():
        return p.resolve(), f"`path: {value}` from the working directory {Path.cwd()}"
    return (path.parent / p).resolve(), f"`path: {value}` from the dataset file's folder"


def split_images(ds: YoloDataset, split: str) -> list[Path]:
    """The split's image files, sorted, as Ultralytics lists them: folders searched recursively, a
    .txt file read line by line (lines starting ./ are relative to the .txt's folder, others to the
    working directory), images chosen by suffix. Raises when an entry or a listed image is missing,
    or the split holds no image."""
    files: list[Path] = []
    for entry in ds.split_entries(split):
        if entry.is_dir():
            files += [Path(r) / f for r, _, fs in os.walk(entry) for f in fs]
        elif entry.is_file() and entry.suffix.lower() == ".txt":
            lines = entry.read_text(encoding="utf-8-sig").strip().splitlines()
            for k, line in enumerate(lines, 1):
                line = line.strip()
                if not line:
                    continue
                p = entry.parent / line[2:] if line.startswith("./") else Path(line)
                if not p.is_file():
                    raise FileNotFoundError(f"image {p} listed in {entry} line {k} does not exist; fix the list "
                                            f"(lines starting ./ are relative to the list's folder)")
                files.append(p)
        elif entry.is_file() and entry.suffix.lower().lstrip(".") in IMG_FORMATS:
            files.append(entry)
        else:
            raise FileNotFoundError(f"dataset file {ds.file}: the {split} split's {entry} does not exist (root "
                                    f"{ds.root}, {ds.root_how}); fix `path:` or `{split}:`")
    out = sorted({p for p in files if p.suffix.lower().lstrip(".") in IMG_FORMATS and not p.name.startswith(".")})
    if not out:
        raise FileNotFoundError(f"dataset file {ds.file}: the {split} split holds no images "
                                f"({', '.join(sorted(IMG_FORMATS))}); fix `{split}:`")
    return out


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last /images/ of the path becomes /labels/, the suffix .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    s = sb.join(str(image).rsplit(sa, 1))
    return Path(s.rsplit(".", 1)[0] + ".txt")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, as stored (the evaluator does not apply EXIF rotation)."""
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise AnnotationError(f"image {path} cannot be read ({e}); replace it or remove it from the split") from e


def read_label_file(path: Path, nc: int, size: tuple[int, int], kpt_fields: int = 0) -> tuple[list[list[float]], int]:
    """Boxes [class, x, y, w, h] in pixels (COCO's xywh) of one label file, and the duplicate lines
    dropped (Ultralytics drops them too). Missing or empty: no boxes. A segment line (class, then x y
    points) counts as its polygon's bounding box. `kpt_fields`: a pose dataset's keypoint fields per
    line, ignored as Ultralytics ignores them for boxes. Raises AnnotationError naming file and line."""
    if not path.is_file():
        return [], 0
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(f"label file {path} is not UTF-8 text ({e}); rewrite it as class cx cy w h lines") from e
    rows: list[tuple[int, list[str]]] = [(k, line.split()) for k, line in enumerate(text.splitlines(), 1) if line.strip()]
    if kpt_fields:
        rows = [(k, p[:5] if len(p) == 5 + kpt_fields else p) for k, p in rows]
    segments = any(len(p) > 6 for _, p in rows)
    w_img, h_img = size
    seen: set[tuple[float, ...]] = set()
    out: list[list[float]] = []
    dropped = 0
    for k, parts in rows:
        where = f"label file {path} line {k}"
        n = len(parts)
        if segments and n == 5:
            raise AnnotationError(f"{where}: a box line in a file of segment lines (Ultralytics refuses the mix); "
                                  f"write every object of the file one way")
        if n != 5 and (n < 7 or n % 2 == 0):
            raise AnnotationError(f"{where} has {n} fields: a box is `class cx cy w h` (5), a segment a class and at "
                                  f"least 3 x y points; {_FIX}")
        try:
            vals = [float(x) for x in parts]
        except ValueError:
            bad = next(x for x in parts if not _is_float(x))
            raise AnnotationError(f"{where}: {bad!r} is not a number; {_FIX}") from None
        if any(v != v or v in (float("inf"), float("-inf")) for v in vals):
            raise AnnotationError(f"{where}: holds a NaN or infinite value; {_FIX}")
        c = vals[0]
        if c != int(c) or not 0 <= c < nc:
            raise AnnotationError(f"{where}: class {parts[0]} is not a class index of the dataset (0..{nc - 1}, from "
                                  f"its names); {_FIX}")
        coords = vals[1:]
        out_of = [v for v in coords if v < -COORD_TOLERANCE or v > 1 + COORD_TOLERANCE]
        if out_of:
            raise AnnotationError(f"{where}: coordinate {out_of[0]:g} is outside [0, 1] (normalised; Ultralytics' "
                                  f"tolerance of {COORD_TOLERANCE:g} allowed); {_FIX}")
        if n == 5:
            cx, cy, bw, bh = coords
        else:
            xs, ys = coords[0::2], coords[1::2]
            # Ultralytics' segments2boxes: the polygon's extent
            x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
            cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        if bw <= 0 or bh <= 0:
            raise AnnotationError(f"{where}: width {bw:g} and height {bh:g}: a box needs both above 0 (a box of "
                                  f"no area can never be matched); {_FIX}")
        key = tuple(vals)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        out.append([int(c), (cx - bw / 2) * w_img, (cy - bh / 2) * h_img, bw * w_img, bh * h_img])
    return out, dropped


def _is_float(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def _image_ids(files: list[Path]) -> list[int]:
    """Ids as Ultralytics' COCO conversion gives them: the file name's number where every stem is one
    (COCO's own ids, so a subset file of COCO ids selects the same images), else 1..N in sorted order."""
    stems = [p.stem for p in files]
    if all(s.isdigit() for s in stems) and len(set(int(s) for s in stems)) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(files) + 1))


def read_split(ds: YoloDataset, split: str) -> tuple[dict[str, Any], dict[int, Path], int]:
    """The split as a COCO dataset dict (category id = class index), each image id's file, and the
    duplicate label lines dropped."""
    files = split_images(ds, split)
    ids = _image_ids(files)
    kpt = ds.raw.get("kpt_shape")
    kpt_fields = int(kpt[0]) * int(kpt[1]) if isinstance(kpt, list) and len(kpt) == 2 else 0
    images, anns, paths = [], [], {}
    dropped = 0
    for iid, f in zip(ids, files):
        w, h = image_size(f)
        try:
            name = str(f.relative_to(ds.root))
        except ValueError:
            name = str(f)
        images.append({"id": iid, "file_name": name, "width": w, "height": h})
        paths[iid] = f
        boxes, d = read_label_file(label_path(f), len(ds.names), (w, h), kpt_fields)
        dropped += d
        for c, x, y, bw, bh in boxes:
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": c, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
    cats = [{"id": i, "name": n} for i, n in ds.names.items()]
    return {"images": images, "annotations": anns, "categories": cats}, paths, dropped


class YoloDatasetReader:
    def read(self, spec: DataSpec) -> EvalData:
        ds = read_dataset_file(Path(spec.data))  # type: ignore[arg-type]
        dataset, paths, dropped = read_split(ds, spec.split)
        digest = hashlib.sha256(json.dumps(dataset, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        record = {"format": "ultralytics", "data": str(spec.data), "split": spec.split, "root": str(ds.root),
                  "root_resolved": ds.root_how, "images": len(paths), "boxes": len(dataset["annotations"]),
                  "duplicate_labels_dropped": dropped, "names_given": ds.names_given}
        return EvalData(coco=coco_index(dataset), paths=paths, digest=digest, label=spec.label(), record=record,
                        names_known=ds.names_given)

    def calibration_images(self, spec: DataSpec) -> list[Path] | None:
        # the train split: Ultralytics' own INT8 export calibrates on val, which flatters the figures
        return split_images(read_dataset_file(Path(spec.data)), "train")  # type: ignore[arg-type]
