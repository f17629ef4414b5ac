"""ort-cpu: a Q/DQ model laid out for ONNX Runtime's CPU EP integer kernels (tasks/quantization/ortcpu.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.targets import Result, Target


def _build(ctx: Any, calib: Result, settings: Any = None) -> Result:
    from tasks.steps import step_quantize_ort_cpu

    return step_quantize_ort_cpu(ctx, calib, publish=False)


def _finish(ctx: Any, calib: Result, raw: Result, extra_float: list[str] | None = None, publish: bool = True) -> Result:
    from tasks.steps import step_refine

    return step_refine(ctx, calib, raw, extra_float, publish)


def describe(cfg: Any, quant: Result) -> Result:
    c = quant["config"]
    return {
        "tool": c["tool"], "quantize_mode": "int8", "target": "ort-cpu",
        "method": (c.get("settings") or {}).get("calibrate_method", "mean-max"),
        "calibration_ep_used": "CPUExecutionProvider",
        "activation_type": c["activation_type"], "weight_type": c["weight_type"], "per_channel": c["per_channel"],
        "reduce_range": c["reduce_range"], "reduce_range_reason": c["reduce_range_reason"],
        "decode_tail_nodes_float": len(c["decode_tail_nodes"]),
        "excluded_nodes": list(cfg.quant.exclude_nodes), "excluded_op_types": list(cfg.quant.exclude_op_types),
        "head_preset_nodes": c.get("head_preset_nodes", []), "stem_nodes": c.get("stem_nodes", []),
        "ort_cpu_kernels": c.get("ort_cpu_kernels", {}),
        "qdq_nodes": quant["qdq"]["qdq_nodes"], "quantized_share": quant["qdq"]["quantized_share"],
        "quantized_conv_share": quant["qdq"].get("conv_quantized_share"),
        "left_in_float": quant["qdq"]["left_in_float"],
        "onnx": quant["onnx"], "artifact": quant["artifact"], "runtime": "onnxruntime",
        "sha256": quant["sha256"], "size_bytes": Path(quant["onnx"]).stat().st_size,
        "wall_s": c["wall_s"], "peak_rss_mib": c["peak_rss_mib"], "note": c.get("method_note"),
    }


def report_lines(q: Result, calib: Result) -> list[str]:
    k = q.get("ort_cpu_kernels", {})
    return [
        f"- **ort-cpu**: ONNX Runtime `quantize_static`, QDQ, {q['activation_type']} activations ({q['method']} "
        f"calibration on {calib['count']} samples), int8 {'per-channel' if q['per_channel'] else 'per-tensor'} weights; "
        f"{q['reduce_range_reason']}",
        f"- ort-cpu: kept in float: {q['decode_tail_nodes_float']} decode nodes after the head, "
        f"{len(q.get('head_preset_nodes', []))} final head convolutions (preset), "
        f"{'the stem convolution' if q.get('stem_nodes') else 'no stem'}; as quantized, before recovery, the CPU EP "
        f"ran {k.get('QLinearConv', 0)} convolutions as integer kernels (QLinearConv), "
        f"{k.get('Conv', 0) + k.get('FusedConv', 0)} in float",
        f"- ort-cpu excluded nodes: {', '.join(q['excluded_nodes']) or 'none'}"
        + (f"; {q['note']}" if q.get("note") else ""),
    ]


TARGET = Target(name="ort-cpu", suffix="int8-ort-cpu", qdir="quantize-int8-ort-cpu", which="int8-ort-cpu",
                runtime="onnxruntime", folder="onnx", model_files=("model.onnx",), build=_build, finish=_finish,
                describe=describe, report_lines=report_lines,
                method=lambda raw: (raw["config"].get("settings") or {}).get("calibrate_method", "mean-max"),
                requires=("onnxruntime",))
