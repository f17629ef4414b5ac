"""Smoke inference: FP32 and INT8 on a few calibration samples, checked against each other before
any time is spent on a full evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks.evaluation.decode import Detections, decode
from tasks.evaluation.sessions import open_session


class SmokeError(RuntimeError):
    """The quantized model is broken (NaN, empty or mis-shaped outputs)."""


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between xyxy boxes a (n, 4) and b (m, 4)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (br - tl).clip(0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def agreement(ref: Detections, test: Detections, conf: float) -> tuple[int, int, float]:
    """(FP32 detections above conf, how many INT8 matches with IoU >= 0.5 and the same class,
    largest score difference over matched pairs)."""
    r = ref.scores > conf
    rb, rs, rc = ref.boxes[r], ref.scores[r], ref.classes[r]
    if len(rb) == 0:
        return 0, 0, 0.0
    iou = box_iou(rb, test.boxes)
    same = rc[:, None] == test.classes[None, :]
    iou = np.where(same, iou, 0.0)
    matched, max_diff, used = 0, 0.0, set()
    for i in np.argsort(-rs):
        j = int(np.argmax(iou[i])) if iou.shape[1] else -1
        if j >= 0 and iou[i, j] >= 0.5 and j not in used:
            used.add(j)
            matched += 1
            max_diff = max(max_diff, abs(float(rs[i]) - float(test.scores[j])))
    return int(len(rb)), matched, max_diff


def smoke_compare(fp32_path: Path, int8_path: Path, input_name: str, samples: np.ndarray, fmt: str,
                  settings: Any, conf: float = 0.25, threads: int | None = None) -> dict[str, Any]:
    """Run both models on `samples` (N x C x H x W) on the runtime of `settings` (EvalSettings: the
    INT8 model's runtime runs the FP32 one too); raise SmokeError if INT8 is unusable."""
    results: dict[str, Any] = {"runtime": settings.runtime}
    outs: dict[str, list[np.ndarray]] = {}
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        sess, rt = open_session(Path(path), settings, threads)
        outs[name] = [sess.run(None, {input_name: np.ascontiguousarray(samples[i:i + 1])})[0]
                      for i in range(len(samples))]
        results[f"{name}_providers"] = rt["providers"]
    shapes = {k: [list(o.shape) for o in v] for k, v in outs.items()}
    if shapes["fp32"] != shapes["int8"]:
        raise SmokeError(f"INT8 output shapes {shapes['int8'][0]} differ from FP32 {shapes['fp32'][0]}")
    for i, o in enumerate(outs["int8"]):
        if not np.isfinite(o).all():
            raise SmokeError(f"INT8 model {int8_path} produced NaN/Inf on calibration sample {i}; "
                             f"exclude the failing layers (--exclude-nodes) or use --set quant.high_precision_dtype=fp32")
    total = matched = 0
    max_diff, int8_dets, fp32_dets, distinct = 0.0, 0, 0, []
    for a, b in zip(outs["fp32"], outs["int8"]):
        da, db = decode(a, fmt), decode(b, fmt)  # type: ignore[arg-type]
        n, m, d = agreement(da, db, conf)
        total, matched, max_diff = total + n, matched + m, max(max_diff, d)
        fp32_dets += int((da.scores > conf).sum())
        int8_dets += int((db.scores > conf).sum())
        distinct.append(int(np.unique(np.round(db.scores, 6)).size))
    if fp32_dets > 0 and int8_dets == 0:
        raise SmokeError(f"INT8 model {int8_path} returns no detection above {conf} where FP32 returns "
                         f"{fp32_dets}: the quantized head collapsed; exclude it from quantization")
    results.update({
        "samples": len(samples), "output_shape": shapes["int8"][0], "finite": True,
        "fp32_detections": fp32_dets, "int8_detections": int8_dets,
        "matched": matched, "agreement": round(matched / total, 4) if total else None,
        "max_score_diff": round(max_diff, 4), "int8_distinct_scores_min": min(distinct) if distinct else 0,
        "max_abs_output_diff": round(max(float(np.abs(a - b).max()) for a, b in zip(outs["fp32"], outs["int8"])), 4),
    })
    return results
