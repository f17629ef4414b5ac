"""COCO annotations, image subsets and pycocotools evaluation."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tasks.evaluation.bootstrap import bootstrap_record, empty_record
from tasks.evaluation.sources.base import coco_index

STAT_NAMES = (
    "map50_95", "map50", "map75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)


class AnnotationError(ValueError):
    """An annotation file that is not usable COCO; the message names the file and the problem."""


class SubsetError(ValueError):
    """A subset that selects nothing or names unknown images."""


def load_coco(path: Path):
    """Validate and load a COCO instances file into a pycocotools COCO object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist; pass --annotations with a COCO instances JSON")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationError(f"annotation file {path} is not JSON ({e}); pass a COCO instances JSON") from e
    if not isinstance(data, dict):
        raise AnnotationError(f"annotation file {path} is not a COCO instances file (top level is not an object)")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise AnnotationError(f"annotation file {path} is not a COCO instances file: missing {', '.join(missing)}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise AnnotationError(f"annotation file {path} is not a COCO instances file: {key} is not a list "
                                  f"({type(data[key]).__name__})")
    if not data["images"]:
        raise AnnotationError(f"annotation file {path} lists no images")
    if not data["categories"]:
        raise AnnotationError(f"annotation file {path} lists no categories")
    # Every entry, not a sample: a wrong type anywhere would otherwise surface as a TypeError deep in
    # pycocotools or the evaluator, after quantization has run.
    for key in ("images", "categories", "annotations"):
        for i, item in enumerate(data[key]):
            problem = _entry_problem(key, item)
            if problem:
                raise AnnotationError(f"annotation file {path}: {key} entry {i} {problem}; fix the file or pass a "
                                      f"COCO instances JSON")
    image_ids = {im["id"] for im in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    for a in data["annotations"]:
        if a["image_id"] not in image_ids:
            raise AnnotationError(f"annotation file {path}: annotation {a.get('id')} refers to unknown image {a['image_id']}")
        if a["category_id"] not in cat_ids:
            raise AnnotationError(f"annotation file {path}: annotation {a.get('id')} has unknown category {a['category_id']}")
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
    return coco_index(data)


_FIELDS = {"images": ("id", "file_name", "width", "height"), "categories": ("id", "name"),
           "annotations": ("image_id", "category_id", "bbox")}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _entry_problem(key: str, item: Any) -> str | None:
    """What is wrong with one entry of `images`, `categories` or `annotations` (None: nothing)."""
    if not isinstance(item, dict):
        return f"is {_short(item)}, not an object"
    lacking = [f for f in _FIELDS[key] if f not in item]
    if lacking:
        return f"lacks {', '.join(lacking)}"
    ints = {"images": ("id",), "categories": ("id",), "annotations": ("image_id", "category_id")}[key]
    for f in ints:
        if not _is_int(item[f]):
            return f"has {f} {_short(item[f])}; COCO ids are integers"
    if key == "images":
        if not isinstance(item["file_name"], str) or not item["file_name"]:
            return f"has file_name {_short(item['file_name'])}; it must name the image file"
        for f in ("width", "height"):
            if not _is_int(item[f]) or item[f] <= 0:
                return f"has {f} {_short(item[f])}; image sizes are positive integers (pixels)"
    elif key == "annotations":
        box = item["bbox"]
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            return f"has bbox {_short(box)}; COCO boxes are [x, y, width, height] numbers"
        if "area" in item and not _is_number(item["area"]):
            return f"has area {_short(item['area'])}; it must be a number"
    return None


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def select_subset(coco, subset: str | int | None, seed: int = 0, label: str = "the annotation file") -> list[int]:
    """Image ids to evaluate.

    subset: None = all; an int N or 'N' = first N image ids; 'random:N' = seeded sample of N;
    'ids:ID,ID,...' = those ids; a path to a file of image ids or file names (one per line, '#'
    comments allowed).
    A size larger than the file lists is refused, never cut to what there is: the figures would
    silently describe fewer images than asked. `label`: how messages name the data (EvalData.label).
    """
    all_ids = sorted(coco.getImgIds())
    if subset is None or subset == "" or subset == "all":
        chosen = all_ids
    elif isinstance(subset, int) or (isinstance(subset, str) and subset.strip().isdigit()):
        n = int(subset)
        if n <= 0:
            raise SubsetError(f"subset size {n} selects no image; pass a positive number")
        _check_size(n, len(all_ids), str(n), "", label)
        chosen = all_ids[:n]
    elif isinstance(subset, str) and subset.startswith("ids:"):
        # the run's own form for a computed list (auto mode's held-out split): every id must exist
        try:
            chosen = sorted({int(x) for x in subset[4:].split(",") if x.strip()})
        except ValueError:
            raise SubsetError(f"subset {subset[:40]!r}... is not ids:ID,ID,... with whole-number image ids") from None
        unknown = sorted(set(chosen) - set(all_ids))
        if unknown:
            raise SubsetError(f"subset ids: names {len(unknown)} images {label} does not list (first: {unknown[:3]})")
    elif isinstance(subset, str) and subset.startswith("random:"):
        text = subset.split(":", 1)[1].strip()
        try:
            n = int(text)
        except ValueError:
            raise SubsetError(f"subset {subset!r} is not random:N with a whole number N; pass e.g. random:100") from None
        if n <= 0:
            raise SubsetError(f"subset {subset!r} selects no image; pass random:N with N > 0")
        _check_size(n, len(all_ids), subset, "random:", label)
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(all_ids, size=n, replace=False).tolist())
    else:
        p = Path(str(subset))
        if p.is_dir():
            raise SubsetError(f"subset {subset!r} is a folder; pass N, random:N, or a file of image ids or names")
        if not p.is_file():
            raise SubsetError(f"subset {subset!r} is neither a number, 'random:N', nor an existing file of image ids or names")
        try:
            lines = p.read_text().splitlines()
        except UnicodeDecodeError as e:
            raise SubsetError(f"subset file {p} is not text ({e}); pass a text file of image ids or names, one "
                              f"per line") from e
        by_name = {im["file_name"]: im["id"] for im in coco.dataset["images"]}
        by_stem = {Path(k).stem: v for k, v in by_name.items()}
        known = set(all_ids)
        chosen, unknown = [], []
        for raw in lines:
            tok = raw.split("#", 1)[0].strip()
            if not tok:
                continue
            if tok.isdigit() and int(tok) in known:
                chosen.append(int(tok))
            elif tok in by_name or Path(tok).name in by_name:
                chosen.append(by_name.get(tok, by_name.get(Path(tok).name)))
            elif Path(tok).stem in by_stem:
                chosen.append(by_stem[Path(tok).stem])
            else:
                unknown.append(tok)
        if unknown:
            raise SubsetError(f"subset file {p} names {len(unknown)} images the annotation file does not have "
                              f"(first: {unknown[:3]})")
        chosen = sorted(set(chosen))
    if not chosen:
        raise SubsetError(f"subset {subset!r} selects no image")
    return [int(i) for i in chosen]


def _check_size(n: int, available: int, asked: str, prefix: str, label: str) -> None:
    if n > available:
        raise SubsetError(f"subset {asked} asks for more images than {label} lists ({available}); pass "
                          f"--subset {prefix}{available} or fewer, or omit --subset to evaluate all")


def evaluate_detections(coco, detections: list[dict], image_ids: Sequence[int],
                        bootstrap: tuple[int, int] | None = None) -> dict[str, Any]:
    """Run COCOeval (bbox) restricted to image_ids; zero detections give zeros, not a crash.
    `bootstrap` = (resamples, seed): also each resample's mAP50-95 and mAP50 (tasks/evaluation/bootstrap.py)."""
    from pycocotools.cocoeval import COCOeval  # heavy: loaded when used, not on --help

    n_gt = len(coco.getAnnIds(imgIds=list(image_ids), iscrowd=False))
    if not detections:
        stats = {k: 0.0 for k in STAT_NAMES}
        out = {"stats": stats, "per_class_ap": {}, "detections": 0, "gt_boxes": n_gt, "log": "no detections"}
        if bootstrap and bootstrap[0]:
            out["bootstrap"] = empty_record(len(image_ids), bootstrap[0], bootstrap[1], image_ids)
        return out
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        dt = coco.loadRes(detections)
        ev = COCOeval(coco, dt, "bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: round(max(float(v), 0.0), 6) for k, v in zip(STAT_NAMES, ev.stats)}
    # precision: [T, R, K, A, M]; area 'all' (0), maxDets 100 (last). -1 marks "no ground truth".
    prec = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = prec[:, :, k]
        p = p[p > -1]
        if p.size:
            per_class[coco.cats[cat_id]["name"]] = round(float(p.mean()), 6)
    out = {"stats": stats, "per_class_ap": per_class, "detections": len(detections), "gt_boxes": n_gt,
           "log": buf.getvalue()}
    if bootstrap and bootstrap[0]:
        out["bootstrap"] = bootstrap_record(ev, bootstrap[0], bootstrap[1])
    return out
