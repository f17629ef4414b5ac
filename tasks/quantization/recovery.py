"""After PTQ, before evaluation: recover accuracy while keeping layers in INT8 (any target).

1. Layers the quantizer left in float but that read a quantized tensor (ORT quantizes every
   activation, so a convolution excluded from ort-cpu's quantization still reads an 8-bit input)
   read the float tensor instead: a layer is in float or in INT8, not half of each.
2. Per-layer statistics on the calibration samples (`layers.local_stats`): each quantized layer run
   on FP32 inputs through its own Q/DQ, giving its noise-to-signal ratio (the sensitivity ranking).
3. The head's final convolutions stay in float when together they fit within `float_mac_cap` of the
   convolution MACs, plus any layers auto mode asks for.

Two more rules were measured on 300 images and left the product (docs/accuracy.md, "What each
recovery rule is worth"): an NSR threshold in the plain run (+0.03 pt pooled, inside the noise)
and fast bias correction (-0.08 pt pooled; on openvino it helps some models and hurts others, so
auto mode tries NNCF's as a candidate, tasks/targets/openvino.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import version_converter

from tasks.config import RecoverySettings
from tasks.quantization.graph import producer_map
from tasks.quantization.layers import (conv_mac_share, convs_of, exclude_layers, layer_macs, local_stats,
                                      ort_int8_convs, qdq_int8_convs, quantized_layers)
from tasks.quantization.modelopt_ptq import QUANTIZABLE_OPS, head_final_convs, qdq_summary, weights_dq_only


def half_float_layers(qmodel: onnx.ModelProto) -> list[str]:
    """Float layers (not in INT8) whose data input still reads a DequantizeLinear."""
    prod = producer_map(qmodel)
    q = set(quantized_layers(qmodel))
    return [n.name for n in qmodel.graph.node if n.op_type in QUANTIZABLE_OPS and n.name not in q and n.input
            and (p := prod.get(n.input[0])) is not None and p.op_type == "DequantizeLinear"]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def fp32_at_opset_of(fp32_path: Path, qmodel: onnx.ModelProto) -> onnx.ModelProto:
    """The FP32 model at the Q/DQ model's opset: the local branches copy per-channel Q/DQ (opset
    13+) into it, and the quantizers raise old exports (YOLOv5's opset 12) to 13 first."""
    fp = onnx.load(str(fp32_path))
    if _opset(qmodel) > _opset(fp):
        fp = version_converter.convert_version(fp, _opset(qmodel))
    return fp


def compute_stats(fp32_path: Path, qdq_path: Path, samples: Sequence[np.ndarray], input_name: str,
                  threads: int | None = None) -> dict[str, dict[str, Any]]:
    q = onnx.load(str(qdq_path))
    fp = fp32_at_opset_of(fp32_path, q)
    q = exclude_layers(q, fp, half_float_layers(q))
    return local_stats(fp, q, samples, input_name, threads)


def ranking(stats: dict[str, dict[str, Any]], macs: dict[str, int], conv_names: Sequence[str]) -> list[dict[str, Any]]:
    """Quantized layers, most sensitive first, each with its share of the convolution MACs."""
    total = sum(macs.get(c, 0) for c in conv_names) or 1
    rows = [{"layer": k, "nsr": round(float(v["nsr"]), 6), "mac_share": round(macs.get(k, 0) / total, 6),
             "group": v["group"]} for k, v in stats.items()]
    rows.sort(key=lambda r: (-r["nsr"], r["layer"]))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def int8_conv_report(model: onnx.ModelProto, model_path: Path, target: str, macs: dict[str, int],
                     conv_names: Sequence[str]) -> dict[str, Any]:
    """The share of convolution MACs that run in INT8, and what stays in float with its cost.

    tensorrt: convolutions with Q/DQ on input and weight (TensorRT fuses those into INT8 layers);
    ort-cpu: convolutions ONNX Runtime's CPU EP actually runs as QLinearConv."""
    int8 = ort_int8_convs(model_path) if target == "ort-cpu" else qdq_int8_convs(model)
    total = sum(macs.get(c, 0) for c in conv_names) or 1
    s = set(int8)
    floats = [{"layer": c, "mac_share": round(macs.get(c, 0) / total, 6)} for c in conv_names if c not in s]
    floats.sort(key=lambda r: -r["mac_share"])
    return {"int8_conv_mac_share": conv_mac_share(int8, macs, conv_names), "int8_convs": len(s & set(conv_names)),
            "convs": len(conv_names), "float_convs": floats}


def head_rule(fp: onnx.ModelProto, stats: dict[str, dict[str, Any]], macs: dict[str, int],
              conv_names: Sequence[str], mac_cap: float) -> tuple[list[str], float]:
    """The head's final convolutions still in INT8, all of them when together they fit under the MAC
    cap, else none: they form boxes and class scores, where the decode (sigmoid, top-k) turns small
    errors into reordered detections that a layer's own noise ratio does not show."""
    total = sum(macs.get(c, 0) for c in conv_names) or 1
    finals = [n for n in head_final_convs(fp) if n in stats]
    share = sum(macs.get(n, 0) for n in finals) / total
    return (finals, share) if finals and share <= mac_cap + 1e-12 else ([], 0.0)


def float_by_rules(fp: onnx.ModelProto, stats: dict[str, dict[str, Any]],
                   settings: RecoverySettings) -> dict[str, Any]:
    """The layers recovery keeps in float (step 3): the head's final convolutions when they fit
    under the MAC cap."""
    cap = settings.float_mac_cap
    macs, conv_names = layer_macs(fp), convs_of(fp)
    rank = ranking(stats, macs, conv_names)
    head, head_share = head_rule(fp, stats, macs, conv_names, cap) if settings.head_float else ([], 0.0)
    return {"head": head, "head_share": head_share, "rank": rank, "macs": macs, "conv_names": conv_names}


def refine(fp32_path: Path, qdq_path: Path, stats: dict[str, dict[str, Any]], out_path: Path, target: str,
           settings: RecoverySettings, extra_float: Sequence[str] = (), dq_only: bool = False) -> dict[str, Any]:
    """Write the refined model to `out_path` (the caller renames it into place) and return its record.
    `dq_only`: the weights of the finished model are stored as INT8 (`quantize.weights_dq_only`)."""
    cap, head_float = settings.float_mac_cap, settings.head_float
    q = onnx.load(str(qdq_path))
    fp = fp32_at_opset_of(fp32_path, q)
    half = half_float_layers(q)
    q = exclude_layers(q, fp, half)
    rules = float_by_rules(fp, stats, settings)
    macs, conv_names, rank = rules["macs"], rules["conv_names"], rules["rank"]
    head, head_share = rules["head"], rules["head_share"]
    chosen = list(dict.fromkeys(head + [x for x in extra_float if x in stats]))
    if chosen:
        q = exclude_layers(q, fp, chosen)
    weights = None
    if dq_only:
        q, weights = weights_dq_only(q)
    onnx.save(q, str(out_path))
    return {"half_float_layers_fixed": half, "dq_only": weights, "float_head": head,
            "float_requested": [x for x in extra_float if x in stats], "float_layers": chosen,
            "head_rule": {"mac_cap": cap, "head_float": head_float, "head_mac_share": round(head_share, 6)},
            "qdq": qdq_summary(q),
            "mac": int8_conv_report(q, out_path, target, macs, conv_names),
            "ranking": [{k: v for k, v in r.items() if k != "group"} for r in rank[:30]]}
