"""Turn raw YOLO outputs into detections (boxes in model-input pixels, scores, class indices).

Three layouts cover the Ultralytics family:
- yolov10: 1 x K x 6 = x1, y1, x2, y2, score, class; end-to-end, already top-K: no NMS.
- yolov8:  1 x (4 + nc) x N = cx, cy, w, h, class scores (YOLOv8, YOLO11); class-aware NMS.
- yolov5:  1 x N x (5 + nc) = cx, cy, w, h, objectness, class probs; score = obj * cls; NMS.

Numpy only: evaluation must not need torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

OutputFormat = Literal["yolov10", "yolov8", "yolov5"]
FORMATS: tuple[str, ...] = ("yolov10", "yolov8", "yolov5")

# An end-to-end head emits at most max_det rows (300 by default); raw heads emit thousands of anchors.
_MAX_E2E_ROWS = 1000


class DecodeError(ValueError):
    """An output the decoders do not understand; the message says what was seen and what to pass."""


@dataclass
class Detections:
    boxes: np.ndarray  # (n, 4) xyxy, model-input pixels
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,) int

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


_OTHER_TASKS = {"segment": "instance segmentation", "pose": "pose estimation", "obb": "oriented boxes",
                "classify": "classification"}


def refuse_other_tasks(task: str | None, output_shapes: list[tuple[int | str | None, ...]], end2end: bool | None,
                       keypoints: bool) -> None:
    """Refuse an export of another Ultralytics task, naming it: by its metadata `task`, else by the
    shapes those heads give (segmentation's mask prototypes, an end-to-end table wider than 6
    columns; a bare 2-D output is left to detect_format, which says it is no detection output). Their
    boxes exist, but scoring them as plain detection would be wrong in ways the output shape hides
    (pose: one class; OBB: rotated boxes)."""
    why = None
    if task in _OTHER_TASKS:
        why = f"its metadata says task: {task}"
    elif keypoints:
        task, why = "pose", "its metadata has kpt_shape"
    elif any(len(s) == 4 for s in output_shapes[1:]) and len(output_shapes[0]) == 3:
        task, why = "segment", f"an output of shape {list(output_shapes[1])} holds mask prototypes"
    elif end2end and len(output_shapes[0]) == 3 and isinstance(output_shapes[0][2], int) and output_shapes[0][2] > 6:
        task, why = "segment, pose or obb", (f"its end-to-end output {list(output_shapes[0])} has "
                                             f"{output_shapes[0][2]} columns, not detection's 6")
    if why:
        what = _OTHER_TASKS.get(task or "", task)
        raise DecodeError(f"this is a YOLO {what} export ({why}); yolo-lowbit scores object detection only: pass a "
                          f"detection export (task: detect)")


def detect_format(shape: tuple[int | str | None, ...], end2end: bool | None = None) -> tuple[OutputFormat, int | None]:
    """Pick the decoder from the output shape -> (format, number of classes or None if unknown).

    `end2end` is Ultralytics' metadata flag when the export carries it; it settles the one
    ambiguous case (a single-class YOLOv5 also has 6 columns).
    """
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if len(dims) != 3 or dims[0] not in (1, None) or dims[1] is None or dims[2] is None:
        raise DecodeError(
            f"output shape {list(shape)} is not a YOLO detection output (expected 1x300x6, 1x(4+nc)xN or "
            f"1xNx(5+nc)); export with a static batch-1 input, or pass --output-format (int8: --set eval.output_format=...)")
    _, a, b = dims
    if b == 6 and (end2end or (end2end is None and a <= _MAX_E2E_ROWS)):
        return "yolov10", None
    if a < b and a > 4:
        return "yolov8", a - 4
    if b < a and b > 5:
        return "yolov5", b - 5
    raise DecodeError(f"output shape {list(shape)} matches no known YOLO layout (yolov10, yolov8, yolov5); "
                      f"pass --output-format explicitly (int8: --set eval.output_format=...)")


def _xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    out = np.empty_like(b)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    out[:, 0] = b[:, 0] - half_w
    out[:, 1] = b[:, 1] - half_h
    out[:, 2] = b[:, 0] + half_w
    out[:, 3] = b[:, 1] + half_h
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thres: float, max_keep: int) -> np.ndarray:
    """Greedy NMS (reference form); indices kept, best first. One vector op per kept box."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_thres]
    return np.asarray(keep, dtype=np.int64)


_BLOCK = 256  # boxes per IoU-matrix block: 256^2 comparisons at a time


def _areas(b: np.ndarray) -> np.ndarray:
    return np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)


def _iou_over(a: np.ndarray, area_a: np.ndarray, b: np.ndarray, area_b: np.ndarray, iou_thres: float) -> np.ndarray:
    """Boolean matrix: IoU(a_i, b_j) > iou_thres, for xyxy boxes with precomputed areas."""
    w = np.minimum(a[:, None, 2], b[None, :, 2])
    w -= np.maximum(a[:, None, 0], b[None, :, 0])
    np.maximum(w, 0, out=w)
    h = np.minimum(a[:, None, 3], b[None, :, 3])
    h -= np.maximum(a[:, None, 1], b[None, :, 1])
    np.maximum(h, 0, out=h)
    inter = w * h
    # inter > t * union, without a division; zero-area pairs (inter = 0) never suppress
    return inter > iou_thres * (area_a[:, None] + area_b[None] - inter)


def _greedy_block(boxes: np.ndarray, areas: np.ndarray, iou_thres: float) -> np.ndarray:
    """Exact greedy NMS within one block of boxes sorted by score.

    S[j, i] = box j (better) overlaps box i (worse). Greedy keeps i iff no kept j < i has S[j, i].
    That recursion has one fixed point; iterating keep <- not any(S[keep]) from all-True settles one
    more level of the suppression chain per step, so the first repeat is the greedy answer."""
    s = np.triu(_iou_over(boxes, areas, boxes, areas, iou_thres), 1)
    keep = np.ones(len(boxes), dtype=bool)
    while True:
        new = ~s[keep].any(0)
        if np.array_equal(new, keep):
            return keep
        keep = new


def greedy_nms_sorted(boxes: np.ndarray, iou_thres: float, limit: int | None = None) -> np.ndarray:
    """Exact greedy NMS (same result as `nms`) for boxes sorted by descending score; boolean keep mask.

    Blocks of _BLOCK boxes in score order: a block is first cleared of boxes overlapping an
    already-kept box (those are final), then resolved with `_greedy_block`. No Python loop per box.
    Greedy keeps boxes in score order, so once `limit` are kept the rest cannot enter the top `limit`."""
    areas = _areas(boxes)
    keep = np.zeros(len(boxes), dtype=bool)
    kept_idx = np.zeros(0, dtype=np.int64)
    for start in range(0, len(boxes), _BLOCK):
        stop = min(start + _BLOCK, len(boxes))
        blk, blk_area = boxes[start:stop], areas[start:stop]
        if len(kept_idx):
            alive = ~_iou_over(boxes[kept_idx], areas[kept_idx], blk, blk_area, iou_thres).any(0)
        else:
            alive = np.ones(stop - start, dtype=bool)
        idx = np.flatnonzero(alive)
        if idx.size:
            idx = idx[_greedy_block(blk[idx], blk_area[idx], iou_thres)]
            keep[start + idx] = True
            kept_idx = np.concatenate([kept_idx, start + idx])
        if limit is not None and len(kept_idx) >= limit:
            keep[kept_idx[limit:]] = False
            break
    return keep


_MAX_WH = 7680.0  # class offset, larger than any input side: boxes of different classes never overlap


def class_aware_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thres: float,
                     max_det: int, max_nms: int = 30000) -> Detections:
    if scores.size == 0:
        return Detections.empty()
    order = np.argsort(-scores, kind="stable")[:max_nms]  # as Ultralytics: at most max_nms candidates
    boxes, scores, classes = boxes[order], scores[order], classes[order]
    # Offsetting each class far apart makes one pass class-aware, in global score order, so it can
    # stop as soon as max_det boxes are kept.
    shifted = boxes + classes[:, None].astype(boxes.dtype) * _MAX_WH
    sel = np.flatnonzero(greedy_nms_sorted(shifted, iou_thres, limit=max_det))
    return Detections(boxes[sel].astype(np.float32), scores[sel].astype(np.float32), classes[sel].astype(np.int64))


def decode(output: np.ndarray, fmt: OutputFormat, conf_thres: float = 0.001, iou_thres: float = 0.65,
           max_det: int = 300) -> Detections:
    """Decode one image's raw output (batch dimension of 1 included or not)."""
    out = np.asarray(output)
    if out.ndim == 3:
        if out.shape[0] != 1:
            raise DecodeError(f"output batch is {out.shape[0]}; decode one image at a time")
        out = out[0]
    if out.ndim != 2:
        raise DecodeError(f"output of shape {output.shape} is not a 2-D detection table")
    if fmt == "yolov10":
        if out.shape[1] != 6:
            raise DecodeError(f"yolov10 output must have 6 columns, got shape {output.shape}")
        scores = out[:, 4]
        keep = scores > conf_thres
        rows = out[keep]
        order = np.argsort(-rows[:, 4], kind="stable")[:max_det]
        rows = rows[order]
        return Detections(rows[:, :4].astype(np.float32), rows[:, 4].astype(np.float32),
                          np.rint(rows[:, 5]).astype(np.int64))
    if fmt == "yolov8":
        pred = out.T  # N x (4 + nc)
        cls_scores = pred[:, 4:]
        if cls_scores.shape[1] == 0:
            raise DecodeError(f"yolov8 output {output.shape} has no class columns")
        classes = cls_scores.argmax(1)
        scores = cls_scores[np.arange(len(pred)), classes]
    elif fmt == "yolov5":
        if out.shape[1] < 6:
            raise DecodeError(f"yolov5 output {output.shape} has no class columns")
        # obj * cls <= obj: rows whose objectness is under the threshold can never pass it.
        pred = out[out[:, 4] > conf_thres]
        cls_prob = pred[:, 5:]
        classes = cls_prob.argmax(1)
        scores = pred[:, 4] * cls_prob[np.arange(len(pred)), classes]
    else:
        raise DecodeError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    keep = scores > conf_thres
    boxes = _xywh_to_xyxy(pred[keep, :4].astype(np.float32))
    return class_aware_nms(boxes, scores[keep], classes[keep], iou_thres, max_det)
