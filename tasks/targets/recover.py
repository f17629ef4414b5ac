"""Recovery as a cached step, shared by the targets whose quantizer writes a Q/DQ ONNX model
(tensorrt, ort-cpu; openvino reads the layer statistics for its rules): the per-layer statistics of
a quantizer's output on the calibration samples, and the model that is shipped after recovery
(tasks/quantization/recovery.py holds the rules themselves)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tasks.evaluation.runtime import fp16_quantize_rounding
from tasks.evaluation.shapes import check_restored, restore_axes
from tasks.quantization.modelopt_ptq import PeakRSS, float16_parts
from tasks.quantization.reconstruct import Settings as ReconstructSettings, reconstruct
from tasks.quantization.torch_lazy import torch
from tasks.quantization.recovery import compute_stats, refine
from tasks.run.cache import CacheEntry, cache_key
from tasks.run.progress import Progress
from tasks.context import Result, RunContext, calib_array, timed
from tasks.run.rundir import atomic_write_json, sha256_file
from tasks.targets.base import EVALUATED_FILE, Target, publish_quantized, quant_result

# Part of the recovery cache keys: raised whenever the same inputs start giving another model.
RECOVERY_VERSION = 1
RECONSTRUCTION_VERSION = 1


def step_layer_stats(ctx: RunContext, calib: Result, raw: Result) -> dict[str, dict[str, Any]]:
    """Per-layer statistics of a quantizer's output on the calibration samples, cached by the FP32 and
    Q/DQ model bytes, the calibration bytes and the sample count."""
    cfg, m = ctx.cfg, ctx.model
    n = min(cfg.recovery.stats_samples, calib["count"])
    key = cache_key("layer-stats", {"model": m["sha256"], "qdq": raw["sha256"], "calib": calib["sha256"],
                                    "samples": n, "version": RECOVERY_VERSION, "versions": ctx.key_versions})
    entry = ctx.cache.get("layer-stats", key)
    if entry is None:
        arr = calib_array(ctx, calib)
        samples = [np.asarray(arr[i:i + 1], dtype=np.float32) for i in range(n)]
        stats = compute_stats(Path(cfg.model), Path(raw["onnx"]), samples, m["input"], cfg.eval.threads)
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            atomic_write_json(Path(td) / "stats.json", {"layers": list(stats), "meta": stats})
            entry = ctx.cache.put("layer-stats", key, {"stats.json": Path(td) / "stats.json"}, {})
    return json.loads(entry.file("stats.json").read_text())["meta"]


def keep_dynamic_axes(ctx: RunContext, calib: Result, path: Path) -> dict[str, Any] | None:
    """A dynamic-shape export's axes back on a finished ONNX model, where it still runs with them
    (tasks/evaluation/shapes.py checks it); otherwise the model stays pinned and the record says why.
    None for a static export."""
    src = ctx.model.get("source")
    if src is None:
        return None
    model = onnx.load(str(path))
    restored = restore_axes(model, src["dynamic_axes"])
    sample = np.asarray(calib_array(ctx, calib)[0:1], dtype=np.float32)
    rec = check_restored(model, restored, src["dynamic_axes"], sample, src["stride"])
    if rec["kept"]:
        onnx.save(restored, str(path))
    return rec


def _cache_model(ctx: RunContext, stage: str, key: str, tdir: Path, conf: Result, qdq: Result, src: Result,
                 meta: Result) -> CacheEntry:
    """A finished model (tdir/model.onnx) into the cache with its config and Q/DQ summary; the
    quantizer's log and calibration cache travel with it from the entry it was made from."""
    atomic_write_json(tdir / "config.json", conf)
    atomic_write_json(tdir / "qdq-summary.json", qdq)
    files = {n: tdir / n for n in ("model.onnx", "config.json", "qdq-summary.json", EVALUATED_FILE)
             if (tdir / n).is_file()}
    for name in src["files"]:
        if name not in files:
            files[name] = Path(src["entry"]) / name
    return ctx.cache.put(stage, key, files, meta)


def float16_model(tdir: Path) -> Result:
    """tdir/model.onnx (finished, float32 float parts) -> the same with float16 float parts, as ModelOpt's
    quantize(high_precision_dtype="fp16") ends; and, where ORT's fp16 QuantizeLinear does not round to
    nearest (TensorRT's does), tdir/evaluated.onnx: the same model with its Q/DQ kept in float32, which
    the smoke check and the evaluation run instead. Returns the record."""
    fp32 = onnx.load(str(tdir / "model.onnx"))
    onnx.save(float16_parts(fp32), str(tdir / "model.onnx"))
    probe = fp16_quantize_rounding()
    rec: Result = {"dtype": "fp16", "conversion": "modelopt.onnx.autocast.convert_to_f16, model inputs and outputs "
                                                  "float32 (the last step of ModelOpt's int8 quantize with fp16)",
                   "ort_fp16_quantize_rounding": probe, "evaluated": "the shipped model"}
    if not probe["exact"]:
        onnx.save(float16_parts(fp32, qdq_in_fp32=True), str(tdir / EVALUATED_FILE))
        rec["evaluated"] = (f"the shipped model with its QuantizeLinear/DequantizeLinear in float32 (every other float "
                            f"op in float16 as shipped): ORT's {probe['provider']} rounds float16 QuantizeLinear toward "
                            f"zero ({probe['wrong']} of {probe['of']} probe values one step off, e.g. "
                            f"{probe['example']}), TensorRT rounds to nearest")
    return rec


def step_refine(ctx: RunContext, calib: Result, raw: Result, t: Target, extra_float: list[str] | None = None,
                publish: bool = True, dq_only: bool = False, precision: str = "fp32") -> Result:
    """A target's Q/DQ output -> the model that is evaluated and shipped: half-float layers fixed, the
    head rule's and `extra_float` layers in float. Cached. `dq_only`: the model keeps its
    weights as INT8 initializers with DequantizeLinear only (tensorrt's option). `precision` fp16:
    the float parts made float16 last (tensorrt's option, `float16_model`)."""
    t0 = time.perf_counter()
    cfg = ctx.cfg
    rs = cfg.recovery
    extra = sorted(extra_float or [])
    key = cache_key("refine", {"model": ctx.model["sha256"], "qdq": raw["sha256"], "calib": calib["sha256"],
                               "target": t.name, "cap": rs.float_mac_cap, "head": rs.head_float, "samples": rs.stats_samples, "extra_float": extra,
                               "dq_only": dq_only, "precision": precision, "version": RECOVERY_VERSION,
                               "versions": ctx.key_versions,
                               # a dynamic-shape export's axes, put back on the model (only such runs have this)
                               **({"dynamic_axes": ctx.model["source"]["dynamic_axes"]} if "source" in ctx.model else {})})
    entry = ctx.cache.get("refine", key)
    cached = entry is not None
    if entry is None:
        stats = step_layer_stats(ctx, calib, raw)
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            tdir = Path(td)
            rec = refine(Path(cfg.model), Path(raw["onnx"]), stats, tdir / "model.onnx", t.name, rs, extra, dq_only)
            axes = keep_dynamic_axes(ctx, calib, tdir / "model.onnx")
            prec = float16_model(tdir) if precision == "fp16" else None
            conf = {**raw["config"], "recovery": {k: v for k, v in rec.items() if k not in ("qdq", "mac")},
                    **({"dynamic_axes": axes} if axes is not None else {}),
                    **({"precision": prec} if prec is not None else {}),
                    "output_sha256": sha256_file(tdir / "model.onnx"), "raw_sha256": raw["sha256"],
                    "refine_cache_key": key}
            entry = _cache_model(ctx, "refine", key, tdir, conf, {**rec["qdq"], **rec["mac"]}, raw, {})
    res = quant_result(entry, cached and raw["cached"], t, settings=raw.get("settings"))
    if publish:
        res = publish_quantized(ctx, res, t)
    return timed(t0, res)


def reconstruction_device(setting: str) -> str:
    """auto: CUDA when torch sees a GPU, else the CPU."""
    if setting != "auto":
        return setting
    return "cuda" if torch.cuda.is_available() else "cpu"


def step_reconstruct(ctx: RunContext, calib: Result, quant: Result, t: Target, publish: bool = True) -> Result:
    """A finished Q/DQ model -> the same model with its convolutions' int8 weights (and biases)
    learned block by block on the calibration samples (tasks/quantization/reconstruct.py). Cached by
    the model and calibration bytes, the settings and the versions; the device is recorded, not
    keyed (CUDA and the CPU learn the same way, with float differences)."""
    t0 = time.perf_counter()
    cfg = ctx.cfg
    rs = cfg.reconstruction
    learn = rs.model_dump(exclude={"mode", "device"})
    key = cache_key("reconstruct", {"model": ctx.model["sha256"], "qdq": quant["sha256"], "calib": calib["sha256"],
                                    "settings": learn, "version": RECONSTRUCTION_VERSION,
                                    "torch": ctx.versions.get("torch"), "versions": ctx.key_versions})
    entry = ctx.cache.get("reconstruct", key)
    cached = entry is not None
    if entry is None:
        device = reconstruction_device(rs.device)
        settings = ReconstructSettings(**learn, threads=cfg.eval.threads, device=device)
        arr = calib_array(ctx, calib)
        n = min(rs.samples, calib["count"])
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td, \
                Progress(f"reconstruct {t.name}", unit="steps") as progress, PeakRSS() as mem:
            tdir = Path(td)
            model, rec = reconstruct(onnx.load(str(cfg.model)), onnx.load(str(quant["onnx"])), arr, settings,
                                     tdir, progress=progress)
            onnx.save(model, str(tdir / "model.onnx"))
            record = {"samples": n, **learn, "device": device, "wall_s": rec.wall_s,
                      "peak_rss_mib": round(mem.peak / 2**20, 1), "weights_changed": rec.changed, "weights": rec.weights,
                      "blocks_kept": f"{sum(b['kept'] for b in rec.blocks)}/{len(rec.blocks)}", "blocks": rec.blocks}
            conf = {**quant["config"], "reconstruction": record, "output_sha256": sha256_file(tdir / "model.onnx"),
                    "unreconstructed_sha256": quant["sha256"], "reconstruct_cache_key": key}
            entry = _cache_model(ctx, "reconstruct", key, tdir, conf, quant["qdq"], quant, {"wall_s": rec.wall_s})
    res = quant_result(entry, cached and quant["cached"], t, settings=quant.get("settings"))
    if publish:
        res = publish_quantized(ctx, res, t)
    return timed(t0, res)
