"""Per-block quantization sensitivity from one PTQ result, without re-calibrating.

The Q/DQ model ModelOpt writes keeps float weights behind QuantizeLinear/DequantizeLinear pairs.
Bypassing every pair except those feeding one block gives "only this block quantized" with the very
scales the full run chose; comparing its detections with FP32 on calibration samples measures what
quantizing that block costs. Blocks are module paths (`/model.10/`, `/model.23/cv3.2/`): the
granularity at which people keep parts of a YOLO in float.
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from tasks.decode import decode
from tasks.quantize import QUANTIZABLE_OPS
from tasks.smoke import agreement

_SPLIT_ABOVE = 8  # a module with more quantizable nodes than this is split one level deeper


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p]


def block_of(name: str, depth: int) -> str:
    parts = _parts(name)
    if len(parts) <= 1:
        return "/" + (parts[0] if parts else name) + "/"
    return "/" + "/".join(parts[:min(depth, len(parts) - 1)]) + "/"


def group_blocks(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Quantizable node names grouped by module path; large modules (a detection head) split deeper."""
    names = [n.name for n in model.graph.node if n.op_type in QUANTIZABLE_OPS and n.name]
    top: dict[str, list[str]] = defaultdict(list)
    for n in names:
        top[block_of(n, 1)].append(n)
    blocks: dict[str, list[str]] = {}
    for b, members in top.items():
        if len(members) > _SPLIT_ABOVE:
            for n in members:
                blocks.setdefault(block_of(n, 2), []).append(n)
        else:
            blocks[b] = members
    return blocks


def exclusion_patterns(blocks: Sequence[str]) -> list[str]:
    """ModelOpt `nodes_to_exclude` regexes (matched from the start) for whole blocks."""
    return [re.escape(b) for b in blocks]


def keep_only_block(qmodel: onnx.ModelProto, prefix: str) -> onnx.ModelProto:
    """A copy of the Q/DQ model in which only nodes under `prefix` still read quantized tensors."""
    m = copy.deepcopy(qmodel)
    nodes = list(m.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    bypass: dict[str, str] = {}
    for dq in nodes:
        if dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            bypass[dq.output[0]] = q.input[0]
    for n in nodes:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.name.startswith(prefix):
            continue
        for i, name in enumerate(n.input):
            if name in bypass:
                n.input[i] = bypass[name]
    graph_outputs = {o.name for o in m.graph.output}
    changed = True
    while changed:  # drop Q/DQ nodes nobody reads any more
        used = {i for n in m.graph.node for i in n.input} | graph_outputs
        keep = [n for n in m.graph.node
                if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or any(o in used for o in n.output)]
        changed = len(keep) != len(m.graph.node)
        if changed:
            del m.graph.node[:]
            m.graph.node.extend(keep)
    return m


def _run(model: onnx.ModelProto | Path, input_name: str, samples: np.ndarray, threads: int | None) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
    return [sess.run(None, {input_name: np.ascontiguousarray(samples[i:i + 1])})[0] for i in range(len(samples))]


def detection_cost(ref: list[np.ndarray], test: list[np.ndarray], fmt: str, conf: float) -> dict[str, float]:
    """(1 - F1 of detection agreement with FP32: IoU >= 0.5, same class, score > conf) plus the mean,
    over samples, of the largest score difference of a matched pair: detections lost or added, and
    confidence moved, both count."""
    tp = n_ref = n_test = 0
    diffs = []
    for a, b in zip(ref, test):
        da, db = decode(a, fmt), decode(b, fmt)  # type: ignore[arg-type]
        keep = db.scores > conf  # both sides at the same threshold, so F1 stays within [0, 1]
        db = type(db)(db.boxes[keep], db.scores[keep], db.classes[keep])
        n, m, d = agreement(da, db, conf)
        tp, n_ref, n_test = tp + m, n_ref + n, n_test + len(db)
        diffs.append(d)
    f1 = 2 * tp / (n_ref + n_test) if (n_ref + n_test) else 1.0
    mean_diff = float(np.mean(diffs)) if diffs else 0.0
    return {"cost": round(1 - f1 + mean_diff, 6), "f1": round(f1, 6), "mean_max_score_diff": round(mean_diff, 6),
            "max_score_diff": round(float(max(diffs) if diffs else 0.0), 6),
            "fp32_detections": n_ref, "int8_detections": n_test, "matched": tp}


def analyse(fp32_path: Path, qdq_path: Path, input_name: str, samples: np.ndarray, fmt: str,
            conf: float = 0.25, threads: int | None = None) -> list[dict[str, Any]]:
    """Rank blocks by what quantizing each one alone costs (highest cost first)."""
    qmodel = onnx.load(str(qdq_path))
    blocks = group_blocks(onnx.load(str(fp32_path)))
    ref = _run(Path(fp32_path), input_name, samples, threads)
    rows = []
    for prefix, members in blocks.items():
        partial = keep_only_block(qmodel, prefix)
        quantized = sum(1 for n in partial.graph.node if n.op_type == "DequantizeLinear")
        if quantized == 0:  # ModelOpt left the whole block in float: nothing to cost
            rows.append({"block": prefix, "nodes": len(members), "quantized": False, "cost": 0.0,
                         "max_score_diff": 0.0})
            continue
        c = detection_cost(ref, _run(partial, input_name, samples, threads), fmt, conf)
        rows.append({"block": prefix, "nodes": len(members), "quantized": True, **c})
    rows.sort(key=lambda r: (-r["cost"], -r["max_score_diff"], r["block"]))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def plot_sensitivity(rows: list[dict[str, Any]], path: Path, top: int = 20) -> Path:
    """A horizontal bar chart (PNG, drawn with Pillow: no plotting dependency) of the top blocks' cost."""
    from PIL import Image, ImageDraw

    rows = rows[:top]
    row_h, label_w, bar_w, pad = 22, 260, 420, 12
    img = Image.new("RGB", (label_w + bar_w + 90, pad * 3 + 20 + row_h * max(len(rows), 1)), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, pad), "INT8 sensitivity: cost of quantizing each block alone (1 - F1 + score shift vs FP32)",
           fill="black")
    top_cost = max([r["cost"] for r in rows] + [1e-9])
    for i, r in enumerate(rows):
        y = pad * 2 + 20 + i * row_h
        d.text((pad, y + 4), r["block"][:40], fill="black")
        w = int(bar_w * r["cost"] / top_cost) if top_cost > 0 else 0
        d.rectangle([label_w, y + 3, label_w + max(w, 1), y + row_h - 3], fill="#c0392b" if r["cost"] > 0 else "#bbbbbb")
        d.text((label_w + max(w, 1) + 6, y + 4), f"{r['cost']:.3f}", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)
    return path
