"""ort-cpu: a Q/DQ model laid out for ONNX Runtime's CPU EP integer kernels (tasks/quantization/ort_qdq.py)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from tasks.quantization.ort_qdq import BUILD_VERSION, build_ort_cpu, cpu_has_vnni
from tasks.run.cache import cache_key
from tasks.context import Result, RunContext, cache_quantized, calib_reader, timed
from tasks.targets.base import Target, publish_quantized, quant_result, reconstruction_summary
from tasks.targets.recover import step_reconstruct, step_refine


def step_quantize_ort_cpu(ctx: RunContext, calib: Result, publish: bool = True) -> Result:
    """The ort-cpu target (tasks/quantization/ort_qdq.py), cached like the ModelOpt step and published under its own names."""
    t0 = time.perf_counter()
    cfg, m = ctx.cfg, ctx.model
    settings = cfg.ort_cpu
    key = cache_key("quantize-ort-cpu", {
        "model": m["sha256"], "calib": calib["sha256"], "settings": settings.model_dump(),
        "exclude_nodes": cfg.quant.exclude_nodes, "exclude_op_types": cfg.quant.exclude_op_types,
        # reduce_range "auto" resolves per CPU: a model built on another CPU kind is another entry
        "cpu_vnni": cpu_has_vnni(), "build_version": BUILD_VERSION, "versions": ctx.key_versions})
    entry = ctx.cache.get("quantize-ort-cpu", key)
    cached = entry is not None
    if entry is None:
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            tdir = Path(td)
            rec = build_ort_cpu(Path(cfg.model), calib_reader(ctx, calib, "calibrate ort-cpu"), settings, tdir / "model.onnx",
                                tdir / "ort-quantize.log", cfg.quant.exclude_nodes, cfg.quant.exclude_op_types)
            snapshot = {**{k: v for k, v in rec.items() if k != "qdq"}, "target": "ort-cpu",
                        "settings": settings.model_dump(), "method_note": (
                            "ort-cpu calibrates asymmetric min/max; --method entropy applies to the tensorrt target"
                            if cfg.quant.method == "entropy" else None),
                        "output_sha256": rec["onnx_sha256"]}
            entry = cache_quantized(ctx, "quantize-ort-cpu", key, calib, tdir, "ort-quantize.log", snapshot, rec)
    res = quant_result(entry, cached, TARGET)
    return timed(t0, publish_quantized(ctx, res, TARGET) if publish else res)


def _build(ctx: RunContext, calib: Result, settings: Any = None) -> Result:
    return step_quantize_ort_cpu(ctx, calib, publish=False)


def _finish(ctx: RunContext, calib: Result, raw: Result, extra_float: list[str] | None = None,
            publish: bool = True) -> Result:
    return step_refine(ctx, calib, raw, TARGET, extra_float, publish)


def _reconstruct(ctx: RunContext, calib: Result, quant: Result, publish: bool = True) -> Result:
    return step_reconstruct(ctx, calib, quant, TARGET, publish)


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
        "ort_cpu_kernels": c.get("ort_cpu_kernels", {}),
        "qdq_nodes": quant["qdq"]["qdq_nodes"], "quantized_share": quant["qdq"]["quantized_share"],
        "quantized_conv_share": quant["qdq"].get("conv_quantized_share"),
        "left_in_float": quant["qdq"]["left_in_float"],
        "onnx": quant["onnx"], "artifact": quant["artifact"], "runtime": "onnxruntime",
        "sha256": quant["sha256"], "size_bytes": Path(quant["onnx"]).stat().st_size,
        "wall_s": c["wall_s"], "peak_rss_mib": c["peak_rss_mib"], "dynamic_axes": c.get("dynamic_axes"), "note": c.get("method_note"),
        "reconstruction": reconstruction_summary(c),
    }


def report_lines(q: Result, calib: Result) -> list[str]:
    k = q.get("ort_cpu_kernels", {})
    return [
        f"- **ort-cpu**: ONNX Runtime `quantize_static`, QDQ, {q['activation_type']} activations ({q['method']} "
        f"calibration on {calib['count']} samples), int8 {'per-channel' if q['per_channel'] else 'per-tensor'} weights; "
        f"{q['reduce_range_reason']}",
        f"- ort-cpu: kept in float: {q['decode_tail_nodes_float']} decode nodes after the head; as quantized, "
        f"before recovery, the CPU EP "
        f"ran {k.get('QLinearConv', 0)} convolutions as integer kernels (QLinearConv), "
        f"{k.get('Conv', 0) + k.get('FusedConv', 0)} in float",
        f"- ort-cpu excluded nodes: {', '.join(q['excluded_nodes']) or 'none'}"
        + (f"; {q['note']}" if q.get("note") else ""),
    ]


TARGET = Target(name="ort-cpu", suffix="int8-ort-cpu", qdir="quantize-int8-ort-cpu", which="int8-ort-cpu",
                runtime="onnxruntime", folder="onnx", model_files=("model.onnx",), build=_build, finish=_finish,
                describe=describe, report_lines=report_lines,
                method=lambda raw: (raw["config"].get("settings") or {}).get("calibrate_method", "mean-max"),
                requires=("onnxruntime",), reconstruct=_reconstruct)
