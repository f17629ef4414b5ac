"""openvino: INT8 for OpenVINO's CPU plugin, NNCF on the OpenVINO model (tasks/quantization/nncf_ptq.py
says why NNCF and not the project's Q/DQ). Shipped as an IR (.xml + .bin), smoke-checked and
COCO-evaluated on OpenVINO."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tasks.quantization.nncf_ptq import BUILD_VERSION, Samples, build_openvino, conv_summary, keep_dynamic_axes
from tasks.run.cache import cache_key
from tasks.context import Result, RunContext, calib_array, timed
from tasks.run.progress import Progress
from tasks.run.rundir import atomic_write_json
from tasks.targets.base import Target, publish_quantized, quant_result

NAME = "openvino"


@dataclass(frozen=True)
class BiasCandidate:
    """Auto mode's other openvino candidate: NNCF's fast bias correction. Not a default, because it
    helps some models and hurts others (300 images: a held-out nano detector -0.83 -> -0.21 pt,
    YOLOv5n -0.81 -> -1.59), so the search measures it on the selection images where the plain
    model does not fit the budget."""

    method: str
    bias_correction: str = "fast"


def step_quantize_openvino(ctx: RunContext, calib: Result, floats: list[str] | None = None,
                           publish: bool = True, bias: str | None = None) -> Result:
    """NNCF quantize of the OpenVINO model on the run's calibration samples, cached by the model and
    calibration bytes, the settings, the exclusions, the layers kept in float and the versions.
    `floats`: layers auto mode keeps in float; `bias`: None, or "fast" (NNCF's fast bias correction,
    auto mode's candidate)."""
    t0 = time.perf_counter()
    cfg, m = ctx.cfg, ctx.model
    settings = cfg.openvino
    extra = sorted(dict.fromkeys(floats or []))
    key = cache_key("quantize-openvino", {
        "model": m["sha256"], "calib": calib["sha256"], "settings": settings.model_dump(),
        "exclude_nodes": cfg.quant.exclude_nodes, "exclude_op_types": cfg.quant.exclude_op_types,
        "float": extra, "bias_correction": bias, "build_version": BUILD_VERSION,
        "versions": ctx.key_versions,
        # a dynamic-shape export's axes, put back on the IR (only such runs have this)
        **({"dynamic_axes": m["source"]["dynamic_axes"]} if "source" in m else {})})
    entry = ctx.cache.get("quantize-openvino", key)
    cached = entry is not None
    if entry is None:
        arr = calib_array(ctx, calib)
        n = calib["count"]
        with Progress("read calibration samples (openvino)", unit="samples") as progress:
            with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
                tdir = Path(td)
                rec = build_openvino(Path(cfg.model), Samples(arr, n, progress), n, tdir / "model.xml", settings,
                                     cfg.quant.exclude_nodes, cfg.quant.exclude_op_types, extra, bias)
                convs = conv_summary(onnx.load(str(cfg.model)), tdir / "model.xml", cfg.eval.threads)
                axes = None if "source" not in m else keep_dynamic_axes(
                    tdir / "model.xml", m["source"]["dynamic_axes"], m["input"],
                    np.asarray(arr[0:1], dtype=np.float32), m["source"]["stride"], cfg.eval.threads)
                bias_done = rec["bias_correction"]
                conf = {**rec, "target": NAME, "settings": settings.model_dump(),
                        "recovery": {"float_layers": extra, "float_requested": extra,
                                     "bias_correction": {"method": f"NNCF {bias_done} bias correction"}
                                     if bias_done else None},
                        **({"dynamic_axes": axes} if axes is not None else {}),
                        "inputs": {"model": {"path": str(cfg.model), "sha256": m["sha256"]},
                                   "calibration": {"sha256": calib["sha256"], "count": n}},
                        "versions": ctx.versions, "cache_key": key}
                atomic_write_json(tdir / "config.json", conf)
                atomic_write_json(tdir / "qdq-summary.json", convs)
                entry = ctx.cache.put("quantize-openvino", key, {n_: tdir / n_ for n_ in
                                      ("model.bin", "model.xml", "config.json", "qdq-summary.json")},
                                      {"wall_s": rec["wall_s"]})
    res = quant_result(entry, cached, TARGET)
    return timed(t0, publish_quantized(ctx, res, TARGET) if publish else res)


def _build(ctx: RunContext, calib: Result, settings: Any = None) -> Result:
    return step_quantize_openvino(ctx, calib, None, publish=False, bias=getattr(settings, "bias_correction", None))


def _alternatives(cfg: Any) -> list[Any]:
    return [BiasCandidate(method=f"nncf-{cfg.openvino.preset}-fast-bias")]


def _method(raw: Result) -> str:
    c = raw["config"]
    return f"nncf-{c['settings']['preset']}" + ("-fast-bias" if c.get("bias_correction") else "")


def _finish(ctx: RunContext, calib: Result, raw: Result, extra_float: list[str] | None = None, publish: bool = True) -> Result:
    """The model NNCF built, or (auto mode) another NNCF run with `extra_float` layers in its ignored
    scope and the same bias correction as `raw`. The head rule is not applied here: NNCF's scope
    already keeps the decode after the head in float (docs/accuracy.md measures the rest)."""
    if extra_float:
        return step_quantize_openvino(ctx, calib, list(extra_float), publish, raw["config"].get("bias_correction"))
    return publish_quantized(ctx, raw, TARGET) if publish else raw


def describe(cfg: Any, quant: Result) -> Result:
    c, q = quant["config"], quant["qdq"]
    xml = Path(quant["artifact"])
    files = [xml.with_suffix(".bin"), xml]
    return {
        "tool": c["tool"], "quantize_mode": "int8", "target": NAME, "method": f"nncf-{c['settings']['preset']}",
        "calibration_ep_used": "OpenVINO CPU (NNCF statistics)", "preset": c["settings"]["preset"],
        "ignored_scope": {"names": len(c["ignored_scope"]["names"]), "types": c["ignored_scope"]["types"]},
        "decode_float": c["settings"]["decode_float"], "sigmoid_float": c["settings"]["sigmoid_float"],
        "bias_correction": c["bias_correction"], "overflow_fix": c["settings"]["overflow_fix"],
        "excluded_nodes": list(cfg.quant.exclude_nodes), "excluded_op_types": list(cfg.quant.exclude_op_types),
        "quantized_conv_share": q.get("conv_quantized_share"), "runtime_primitives": q.get("runtime_primitives"),
        "read_on_cpu": q.get("read_on_cpu"),
        "onnx": None, "artifact": str(xml), "artifact_files": [str(f) for f in files], "runtime": "openvino",
        "sha256": quant["sha256"], "size_bytes": sum(f.stat().st_size for f in files),
        "wall_s": c["wall_s"], "peak_rss_mib": c["peak_rss_mib"], "dynamic_axes": c.get("dynamic_axes"),
    }


def report_lines(q: Result, calib: Result) -> list[str]:
    prims = ", ".join(f"{v} {k}" for k, v in (q.get("runtime_primitives") or {}).items())
    return [
        f"- **openvino**: {q['tool']}, preset {q['preset']} (symmetric int8 weights, asymmetric uint8 activations), "
        f"{calib['count']} calibration samples, {q['bias_correction'] or 'no'} bias correction, overflow fix "
        f"{q['overflow_fix']} (7-bit weights: no 16-bit saturation on CPUs without VNNI); "
        f"artifact `{q['artifact']}` (+ .bin)",
        f"- openvino: kept in float: {q['ignored_scope']['names']} named nodes ("
        + ", ".join(w for w, on in (("the decode after the head", q["decode_float"]),
                                    ("the excluded nodes", q["excluded_nodes"]),
                                    ("layers put back by the accuracy guard", q["recovery"]["float_layers"])) if on)
        + f") and op types {', '.join(q['ignored_scope']['types']) or 'none'}",
        f"- openvino: convolutions as OpenVINO's CPU plugin compiled them on {q.get('read_on_cpu')}: {prims}",
    ]


TARGET = Target(name=NAME, suffix="int8-openvino", qdir="quantize-int8-openvino", which="int8-openvino",
                runtime="openvino", folder="openvino", model_files=("model.bin", "model.xml"), build=_build,
                finish=_finish, describe=describe, report_lines=report_lines,
                alternatives=_alternatives, method=_method, ranking_from="tensorrt",
                requires=("openvino", "nncf"))
