"""tensorrt: ModelOpt ONNX PTQ (int8 Q/DQ placed for TensorRT), recovery, INT8 weights (dq_only).

Its quantize step runs ModelOpt; the range estimators that read histograms (entropy, percentile, mse;
tasks/quantization/ranges.py) start from ModelOpt's max model and one streamed histogram pass, both
cached, and hand their scales to ModelOpt as a calibration cache."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import onnx

from tasks.config import QuantSettings
from tasks.quantization.entropy import NUM_BINS, collect_histograms
from tasks.quantization.modelopt_ptq import PeakRSS, run_ptq, uses_histograms
from tasks.quantization.ranges import load_stats, max_amax, save_stats
from tasks.run.cache import cache_key
from tasks.context import Result, RunContext, cache_quantized, calib_reader, timed
from tasks.run.rundir import sha256_file
from tasks.targets.base import Target, publish_quantized, quant_result, reconstruction_summary
from tasks.targets.recover import step_reconstruct, step_refine


def step_quantize(ctx: RunContext, calib: Result, settings: QuantSettings | None = None,
                  publish: bool = True) -> Result:
    """ModelOpt INT8 PTQ, cached by model bytes, calibration bytes, settings and versions.

    `settings` overrides the run's (accuracy-guard candidates); `publish` lays the result into the
    run folder (candidates stay in the cache until one is chosen)."""
    t0 = time.perf_counter()
    cfg, m = ctx.cfg, ctx.model
    settings = settings or cfg.quant
    seed = cfg.calib_seed
    key = cache_key("quantize", {"model": m["sha256"], "calib": calib["sha256"],
                                 "settings": settings.ptq_key(), "seed": seed, "versions": ctx.key_versions})
    entry = ctx.cache.get("quantize", key)
    cached = entry is not None
    if entry is None:
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            tdir = Path(td)
            reader = calib_reader(ctx, calib, f"calibrate tensorrt ({settings.method})")
            max_model, stats, passes = None, None, None
            if uses_histograms(settings):
                # ModelOpt's max pass and the histogram pass are shared by every estimator
                base = step_quantize(ctx, calib, settings.model_copy(update={"method": "max"}), publish=False)
                max_model = Path(base["onnx"])
                stats, hist_meta = _histogram_stats(ctx, calib, max_model, settings)
                passes = {"max_pass_s": base["config"]["wall_s"], "max_pass_cached": base["cached"],
                          "max_pass_peak_rss_mib": base["config"]["peak_rss_mib"], **hist_meta}
            rec = run_ptq(Path(cfg.model), m["input"], reader, settings, tdir / "model.onnx",
                          tdir / "modelopt-onnx-ptq.log", seed=seed, max_model=max_model, stats=stats)
            if passes:
                rec["ranges"] = {**rec["ranges"], **passes,
                                 "calibration_s": round(passes["max_pass_s"] + passes["histogram_pass_s"]
                                                        + rec["ranges"]["search_s"], 3)}
            snapshot = {"settings": settings.model_dump(), "modelopt_call": rec["args"],
                        "op_types_excluded": rec["args"]["op_types_to_exclude"],
                        "topk_kept_float": True,
                        "calibration_eps": {k: rec[k] for k in ("calibration_eps_requested", "calibration_eps_passed",
                                                                "calibration_eps_reasons", "calibration_ep_used",
                                                                "ort_eps_enabled")},
                        "wall_s": rec["wall_s"], "peak_rss_mib": rec["peak_rss_mib"],
                        "rss_growth_mib": rec["rss_growth_mib"], "metadata_props_restored": rec["metadata_props_restored"],
                        "output_sha256": rec["onnx_sha256"], "seed": seed, "entropy": rec["entropy"],
                        "ranges": rec["ranges"]}
            entry = cache_quantized(ctx, "quantize", key, calib, tdir, "modelopt-onnx-ptq.log", snapshot, rec)
    res = quant_result(entry, cached, TARGET, settings=settings.model_dump())
    if publish:
        res = publish_quantized(ctx, res, TARGET)
    return timed(t0, res)


def _histogram_stats(ctx: RunContext, calib: Result, max_model: Path,
                     settings: QuantSettings) -> tuple[tuple[Result, int], Result]:
    """The streamed histogram pass over the calibration samples, on the ranges of ModelOpt's max
    model, cached: every estimator of one calibration set reads the same statistics."""
    # only entropy reads the sample order (its search starts at the first sample's range)
    order = ctx.cfg.calib_seed if settings.method == "entropy" else "any"
    key = cache_key("histograms", {"model": ctx.model["sha256"], "calib": calib["sha256"],
                                   "max_model": sha256_file(max_model), "order": order, "bins": NUM_BINS,
                                   "versions": ctx.key_versions})
    entry = ctx.cache.get("histograms", key)
    cached = entry is not None
    if entry is None:
        reader = calib_reader(ctx, calib, "histograms")
        if settings.method == "entropy":
            reader = reader.with_seed(ctx.cfg.calib_seed)
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td, PeakRSS() as mem:
            t0 = time.perf_counter()
            stats = collect_histograms(Path(ctx.cfg.model), max_amax(onnx.load(str(max_model))), reader)
            wall = time.perf_counter() - t0
            save_stats(Path(td) / "histograms.npz", *stats)
            entry = ctx.cache.put("histograms", key, {"histograms.npz": Path(td) / "histograms.npz"},
                                  {"wall_s": round(wall, 3), "peak_rss_mib": round(mem.peak / 2**20, 1)})
    return load_stats(entry.file("histograms.npz")), {
        "histogram_pass_s": entry.meta["wall_s"], "histogram_pass_cached": cached,
        "histogram_pass_peak_rss_mib": entry.meta.get("peak_rss_mib")}


def _build(ctx: RunContext, calib: Result, settings: Any = None) -> Result:
    return step_quantize(ctx, calib, settings, publish=False)


def _finish(ctx: RunContext, calib: Result, raw: Result, extra_float: list[str] | None = None,
            publish: bool = True) -> Result:
    return step_refine(ctx, calib, raw, TARGET, extra_float, publish, dq_only=ctx.cfg.quant.dq_only,
                       precision=ctx.cfg.quant.high_precision_dtype)


def _alternatives(cfg: Any) -> list[Any]:
    # one other range estimator, from the same max and histogram passes (only an evaluation more):
    # percentile was the best at 32 samples on YOLOv5n where mse was at 128 and 512 (bench/ranges.py)
    return [cfg.quant.model_copy(update={"method": "percentile" if cfg.quant.method == "mse" else "mse"})]


def _reconstruct(ctx: RunContext, calib: Result, quant: Result, publish: bool = True) -> Result:
    return step_reconstruct(ctx, calib, quant, TARGET, publish)


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
        "qdq_nodes": quant["qdq"]["qdq_nodes"],
        "quantized_share": quant["qdq"]["quantized_share"],
        "quantized_conv_share": quant["qdq"].get("conv_quantized_share"),
        "left_in_float": quant["qdq"]["left_in_float"],
        "onnx": quant["onnx"], "artifact": quant["artifact"], "runtime": "tensorrt (evaluated on onnxruntime)",
        "sha256": quant["sha256"], "size_bytes": Path(quant["onnx"]).stat().st_size,
        "wall_s": cfgq["wall_s"], "peak_rss_mib": cfgq["peak_rss_mib"], "dynamic_axes": cfgq.get("dynamic_axes"),
        "reconstruction": reconstruction_summary(cfgq),
        **({"precision": cfgq["precision"]} if "precision" in cfgq else {}),
    }


def report_lines(q: Result, calib: Result) -> list[str]:
    lines = [
        f"- **tensorrt**: ModelOpt ONNX PTQ, int8, calibration **{q['method']}** on {calib['count']} samples "
        f"({calib['source']}), calibration EP used: `{q['calibration_ep_used']}`",
        f"- high-precision dtype: {q['high_precision_dtype']}; Q/DQ nodes: {q['qdq_nodes']}; "
        f"quantizable nodes quantized: {q['quantized_share'] * 100:.1f}%",
        f"- excluded op types: {', '.join(q['excluded_op_types']) or 'none'}"
        + (" (TopK kept in float: quantizing its inputs coarsens the output scores to a few levels)"
           if q["topk_kept_float"] else ""),
        f"- excluded nodes: {', '.join(q['excluded_nodes']) or 'none'}",
    ]
    lines += [f"- {r}" for r in q["calibration_ep_reasons"]]
    prec = q.get("precision")
    if prec:
        lines.append(f"- float parts in {prec['dtype']} ({prec['conversion']}); evaluated: {prec['evaluated']}")
    return lines


TARGET = Target(name="tensorrt", suffix="int8-qdq", qdir="quantize-int8", which="int8", runtime="onnxruntime",
                folder="onnx", model_files=("model.onnx",), build=_build, finish=_finish, describe=describe,
                report_lines=report_lines, alternatives=_alternatives,
                method=lambda raw: raw.get("settings", {}).get("method", "mse"),
                requires=("modelopt",), reconstruct=_reconstruct)
