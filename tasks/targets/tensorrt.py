"""tensorrt: ModelOpt ONNX PTQ (int8 Q/DQ placed for TensorRT), recovery, INT8 weights (dq_only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.targets import Result, Target


def _build(ctx: Any, calib: Result, settings: Any = None) -> Result:
    from tasks.steps import step_quantize

    return step_quantize(ctx, calib, settings, publish=False)


def _finish(ctx: Any, calib: Result, raw: Result, extra_float: list[str] | None = None, publish: bool = True) -> Result:
    from tasks.steps import step_refine

    return step_refine(ctx, calib, raw, extra_float, publish)


def _alternatives(cfg: Any) -> list[Any]:
    # one other range estimator, from the same max and histogram passes (only an evaluation more):
    # percentile was the best at 32 samples on YOLOv5n where mse was at 128 and 512 (bench/ranges.py)
    return [cfg.quant.model_copy(update={"method": "percentile" if cfg.quant.method == "mse" else "mse"})]


def describe(cfg: Any, quant: Result) -> Result:
    cfgq = quant["config"]
    qs = quant.get("settings") or cfg.quant.model_dump()
    return {
        "tool": "modelopt.onnx.quantization.quantize", "quantize_mode": "int8", "target": "tensorrt",
        "method": qs["method"],
        "calibration_ep_used": cfgq["calibration_eps"]["calibration_ep_used"],
        "calibration_eps_requested": cfgq["calibration_eps"]["calibration_eps_requested"],
        "calibration_ep_reasons": cfgq["calibration_eps"]["calibration_eps_reasons"],
        "high_precision_dtype": qs["high_precision_dtype"],
        "excluded_nodes": list(qs["exclude_nodes"]),
        "excluded_op_types": cfgq["op_types_excluded"],
        "topk_kept_float": cfgq["topk_kept_float"],
        "head_preset_nodes": cfgq.get("head_preset_nodes", []),
        "qdq_nodes": quant["qdq"]["qdq_nodes"],
        "quantized_share": quant["qdq"]["quantized_share"],
        "quantized_conv_share": quant["qdq"].get("conv_quantized_share"),
        "left_in_float": quant["qdq"]["left_in_float"],
        "onnx": quant["onnx"], "artifact": quant["artifact"], "runtime": "tensorrt (evaluated on onnxruntime)",
        "sha256": quant["sha256"], "size_bytes": Path(quant["onnx"]).stat().st_size,
        "wall_s": cfgq["wall_s"], "peak_rss_mib": cfgq["peak_rss_mib"],
    }


def report_lines(q: Result, calib: Result) -> list[str]:
    lines = [
        f"- **tensorrt**: ModelOpt ONNX PTQ, int8, calibration **{q['method']}** on {calib['count']} samples "
        f"({calib['source']}), calibration EP used: `{q['calibration_ep_used']}`",
        f"- high-precision dtype: {q['high_precision_dtype']}; Q/DQ nodes: {q['qdq_nodes']}; "
        f"quantizable nodes quantized: {q['quantized_share'] * 100:.1f}%",
        f"- excluded op types: {', '.join(q['excluded_op_types']) or 'none'}"
        + (" (TopK kept in float by default: quantizing its inputs coarsens the output scores to a few levels)"
           if q["topk_kept_float"] else ""),
        f"- excluded nodes: {', '.join(q['excluded_nodes']) or 'none'}",
        f"- head preset: {len(q['head_preset_nodes'])} final head convolutions kept in float"
        + (f" ({', '.join(q['head_preset_nodes'])})" if q["head_preset_nodes"] else
           " by ModelOpt (preset off: recovery decides, below)"),
    ]
    lines += [f"- {r}" for r in q["calibration_ep_reasons"]]
    return lines


TARGET = Target(name="tensorrt", suffix="int8-qdq", qdir="quantize-int8", which="int8", runtime="onnxruntime",
                folder="onnx", model_files=("model.onnx",), build=_build, finish=_finish, describe=describe,
                report_lines=report_lines, alternatives=_alternatives,
                method=lambda raw: raw.get("settings", {}).get("method", "mse"),
                requires=("modelopt",))
