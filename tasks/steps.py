"""The INT8 run's stages as plain functions: each checks the content-addressed cache, computes on a
miss, and lays its artifacts into the run folder. The Prefect flow only wires these together."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from tasks import __version__
from tasks.run.cache import StepCache, cache_key
from tasks.quantization.calibration import (CalibReader, check_overlap, load_calib_tensor, open_reader, open_samples, pick_calib_images,
                               write_calib_npy)
from tasks.config import QuantSettings, RunConfig
from tasks.run.faults import fault_point
from tasks.run.inputs import check_inputs
from tasks.run.progress import Progress
from tasks.evaluation.bootstrap import paired_interval
from tasks.evaluation.evaluate import evaluate_model
from tasks.quantization.entropy import NUM_BINS, collect_histograms
from tasks.quantization.quantize import PeakRSS, run_ptq, uses_histograms
from tasks.quantization.ranges import load_stats, max_amax, save_stats
from tasks.run.rundir import atomic_copy, atomic_write_json, create_run_dir, default_run_id, sha256_file
from tasks.evaluation.smoke import smoke_compare

log = logging.getLogger(__name__)


class RegressionGateError(RuntimeError):
    """The INT8 model is worse than the run's budget allows (its report and artifacts are written)."""


def versions() -> dict[str, str]:
    out = {"yolo_lowbit": __version__}
    for dist in ("nvidia-modelopt", "onnxruntime-gpu", "onnxruntime", "onnx", "numpy", "pycocotools",
                 "opencv-python-headless", "openvino", "nncf", "prefect"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _compute_versions(v: dict[str, str]) -> dict[str, str]:
    """Versions that can change a result (prefect cannot): these enter cache keys."""
    return {k: v[k] for k in ("yolo_lowbit", "nvidia-modelopt", "onnxruntime-gpu", "onnxruntime", "onnx",
                              "numpy", "opencv-python-headless", "openvino", "nncf") if k in v}


@dataclass
class RunContext:
    cfg: RunConfig
    run_dir: Path
    cache: StepCache
    versions: dict[str, str]
    model: dict[str, Any] = field(default_factory=dict)
    # auto mode's selection images (tasks/run/guard_data.py), hashed like the evaluated ones
    guard: dict[str, Any] | None = None

    @property
    def key_versions(self) -> dict[str, str]:
        return _compute_versions(self.versions)


def prepare_run(cfg: RunConfig) -> RunContext:
    """Check the inputs, then create the run folder (state: running): bad input leaves no folder."""
    inputs = check_inputs(cfg)
    cfg, eval_files = inputs.cfg, inputs.eval_files
    run_dir = create_run_dir(cfg.run_root, cfg.run_id or default_run_id())
    cfg.run_id = run_dir.name
    atomic_write_json(run_dir / "run-config.json", cfg.model_dump(mode="json"))
    ctx = RunContext(cfg=cfg, run_dir=run_dir, cache=StepCache(cfg.cache_dir), versions=versions())
    setup = inputs.setup
    ctx.model = {"path": str(cfg.model), "sha256": sha256_file(cfg.model), "input": setup.input_name,
                 "input_shape": list(setup.in_shape), "output_format": setup.fmt,
                 "num_classes": setup.nc, **setup.fmt_info,
                 "eval_image_files": [str(p) for p in eval_files],
                 # hashed once here: both evaluations key their cache entries on these bytes
                 "eval_image_sha256": [sha256_file(p) for p in eval_files],
                 "annotations_sha256": sha256_file(cfg.annotations)}
    g = inputs.guard
    if g is not None:
        ctx.guard = {"images": str(g.images), "annotations": str(g.annotations), "subset": g.subset, "how": g.how,
                     "description": g.description, "count": len(g.files),
                     "image_sha256": [sha256_file(p) for p in g.files],
                     "annotations_sha256": sha256_file(g.annotations)}
    return ctx


def _timed(t0: float, result: dict[str, Any]) -> dict[str, Any]:
    """Record the step's wall time in its result (results travel between Prefect tasks; the context
    object may be copied on the way, so the result is the record)."""
    result["step_wall_s"] = round(time.perf_counter() - t0, 3)
    return result


def step_calibration(ctx: RunContext) -> dict[str, Any]:
    """Calibration tensor: checked user tensor, or built from images; calibration.json in the run."""
    t0 = time.perf_counter()
    cfg, m = ctx.cfg, ctx.model
    out_json = ctx.run_dir / "quantize-int8" / "calibration.json"
    if cfg.calib is not None:
        # A user tensor is used in place (memory-mapped); its bytes' hash is the cache identity.
        _, info = load_calib_tensor(cfg.calib, m["input"], m["input_shape"], cfg.eval.preprocess)
        info.update({"tensor_path": str(cfg.calib), "cached": False})
        atomic_write_json(out_json, info)
        return _timed(t0, info)
    files = pick_calib_images(cfg.calib_images, cfg.calib_count, cfg.calib_seed)
    eval_files = [Path(p) for p in m["eval_image_files"]]
    overlap = check_overlap(files, eval_files, cfg.allow_calib_overlap)
    image_hashes = [[p.name, sha256_file(p)] for p in files]
    key = cache_key("calibration", {"images": image_hashes, "input_shape": m["input_shape"],
                                    "preprocess": cfg.eval.preprocess.model_dump(), "versions": ctx.key_versions})
    entry = ctx.cache.get("calibration", key)
    cached = entry is not None
    if entry is None:
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            with Progress("calibration images") as progress:
                sha = write_calib_npy(Path(td) / "calib.npy", files, m["input_shape"], cfg.eval.preprocess, progress)
            entry = ctx.cache.put("calibration", key, {"calib.npy": Path(td) / "calib.npy"}, {"sha256": sha})
    tensor = entry.file("calib.npy")
    info = {"source": "images", "folder": str(cfg.calib_images), "count": len(files),
            "shape": [len(files), *m["input_shape"][1:]], "sha256": entry.files["calib.npy"],
            "seed": cfg.calib_seed, "order": "seeded permutation of the sorted folder listing",
            "images": [n for n, _ in image_hashes], "image_sha256": dict(image_hashes),
            "overlap_with_eval": overlap, "tensor_path": str(tensor), "cached": cached}
    atomic_write_json(out_json, info)
    return _timed(t0, info)


def _calib_array(ctx: RunContext, calib: dict[str, Any]) -> Any:
    """The calibration samples, sliceable; a .npy is read by file offsets, never whole."""
    return open_samples(Path(calib["tensor_path"]), ctx.model["input"])


def _calib_reader(ctx: RunContext, calib: dict[str, Any], label: str) -> CalibReader:
    reader = open_reader(Path(calib["tensor_path"]), ctx.model["input"])
    reader.progress = Progress(label, unit="samples")
    return reader


def step_quantize(ctx: RunContext, calib: dict[str, Any], settings: QuantSettings | None = None,
                  publish: bool = True) -> dict[str, Any]:
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
            reader = _calib_reader(ctx, calib, f"calibrate tensorrt ({settings.method})")
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
                        "topk_kept_float": not settings.quantize_topk,
                        "calibration_eps": {k: rec[k] for k in ("calibration_eps_requested", "calibration_eps_passed",
                                                                "calibration_eps_reasons", "calibration_ep_used",
                                                                "ort_eps_enabled")},
                        "wall_s": rec["wall_s"], "peak_rss_mib": rec["peak_rss_mib"],
                        "rss_growth_mib": rec["rss_growth_mib"], "metadata_props_restored": rec["metadata_props_restored"],
                        "head_preset_nodes": rec["head_preset_nodes"],
                        "output_sha256": rec["onnx_sha256"], "seed": seed, "entropy": rec["entropy"],
                        "ranges": rec["ranges"]}
            entry = _cache_quantized(ctx, "quantize", key, calib, tdir, "modelopt-onnx-ptq.log", snapshot, rec)
    res = _quant_result(entry, cached, "tensorrt", settings=settings.model_dump())
    if publish:
        res = publish_quantized(ctx, res)
    return _timed(t0, res)


def _histogram_stats(ctx: RunContext, calib: dict[str, Any], max_model: Path,
                     settings: QuantSettings) -> tuple[tuple[dict[str, Any], int], dict[str, Any]]:
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
        reader = _calib_reader(ctx, calib, "histograms")
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


def _cache_quantized(ctx: RunContext, stage: str, key: str, calib: dict[str, Any], tdir: Path, log_name: str,
                     snapshot: dict[str, Any], rec: dict[str, Any]) -> Any:
    """Store a quantize step's output in the cache: the model and log its quantizer wrote into `tdir`,
    config.json (the snapshot, with the inputs and versions it came from), qdq-summary.json, and the
    entropy calibration cache where one was written."""
    snapshot = {**snapshot, "inputs": {"model": {"path": str(ctx.cfg.model), "sha256": ctx.model["sha256"]},
                                       "calibration": {"sha256": calib["sha256"], "count": calib["count"]}},
                "versions": ctx.versions, "cache_key": key}
    atomic_write_json(tdir / "config.json", snapshot)
    atomic_write_json(tdir / "qdq-summary.json", rec["qdq"])
    names = ["model.onnx", "config.json", "qdq-summary.json", log_name]
    names += sorted(p.name for p in tdir.glob("*-calibration.cache"))
    return ctx.cache.put(stage, key, {n: tdir / n for n in names}, {"wall_s": rec["wall_s"]})


def model_sha256(files: dict[str, str], names: tuple[str, ...]) -> str:
    """The identity of a model kept in several files (an OpenVINO IR: .xml and .bin): one file's own
    sha256, else the sha256 of the files' hashes in order."""
    if len(names) == 1:
        return files[names[0]]
    import hashlib

    return hashlib.sha256("".join(files[n] for n in names).encode()).hexdigest()


def _quant_result(entry: Any, cached: bool, target_name: str, **extra: Any) -> dict[str, Any]:
    """A quantize step's result from its cache entry (model still in the cache until published).
    `artifact`: the file the target's runtime loads; `onnx`: the same where that is an ONNX model."""
    from tasks.targets import target

    t = target(target_name)
    path = str(entry.file(t.artifact_file))
    return {"artifact": path, "onnx": path if path.endswith(".onnx") else None, "entry": str(entry.path),
            "sha256": model_sha256(entry.files, t.model_files), "cached": cached,
            "config": json.loads(entry.file("config.json").read_text()),
            "qdq": json.loads(entry.file("qdq-summary.json").read_text()), "target": target_name,
            "files": sorted(entry.files), **extra}


def publish_quantized(ctx: RunContext, quant: dict[str, Any]) -> dict[str, Any]:
    """Copy a (cached) quantization result into the run folder under its target's final names: the
    model into the target's folder (an IR's .bin before its .xml, so an .xml is never there without
    its weights), every other file of the entry (config, summary, log, cache) into its quantize folder."""
    from tasks.targets import target

    t = target(quant["target"])
    entry = Path(quant["entry"])
    stem = f"{Path(ctx.cfg.model).stem}-{t.suffix}"
    out = {}
    for name in t.model_files:
        out[name] = ctx.run_dir / t.folder / (stem + Path(name).suffix)
        atomic_copy(entry / name, out[name])
    for name in quant["files"]:
        if name not in t.model_files:
            atomic_copy(entry / name, ctx.run_dir / t.qdir / name)
    artifact = str(out[t.artifact_file])
    return {**quant, "artifact": artifact, "onnx": artifact if artifact.endswith(".onnx") else None}


def step_quantize_ort_cpu(ctx: RunContext, calib: dict[str, Any], publish: bool = True) -> dict[str, Any]:
    """The ort-cpu target (tasks/quantization/ortcpu.py), cached like the ModelOpt step and published under its own names."""
    from tasks.quantization.ortcpu import BUILD_VERSION, build_ort_cpu, cpu_has_vnni

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
            rec = build_ort_cpu(Path(cfg.model), _calib_reader(ctx, calib, "calibrate ort-cpu"), settings, tdir / "model.onnx",
                                tdir / "ort-quantize.log", cfg.quant.exclude_nodes, cfg.quant.exclude_op_types)
            snapshot = {**{k: v for k, v in rec.items() if k != "qdq"}, "target": "ort-cpu",
                        "settings": settings.model_dump(), "method_note": (
                            "ort-cpu calibrates asymmetric min/max; --method entropy applies to the tensorrt target"
                            if cfg.quant.method == "entropy" else None),
                        "output_sha256": rec["onnx_sha256"]}
            entry = _cache_quantized(ctx, "quantize-ort-cpu", key, calib, tdir, "ort-quantize.log", snapshot, rec)
    res = _quant_result(entry, cached, "ort-cpu")
    return _timed(t0, publish_quantized(ctx, res) if publish else res)


def step_smoke(ctx: RunContext, calib: dict[str, Any], quant: dict[str, Any]) -> dict[str, Any]:
    """FP32 vs INT8 on the first few calibration samples, both on the target's runtime; raises
    SmokeError on a broken INT8 model."""
    from tasks.targets import target

    t0 = time.perf_counter()
    cfg, m = ctx.cfg, ctx.model
    t = target(quant["target"])
    arr = _calib_array(ctx, calib)
    samples = np.asarray(arr[: cfg.smoke_samples], dtype=np.float32)
    res = smoke_compare(Path(cfg.model), Path(quant["artifact"]), m["input"], samples, m["output_format"],
                        eval_settings(ctx, t.runtime), conf=cfg.smoke_conf,
                        threads=cfg.eval.threads)
    atomic_write_json(ctx.run_dir / t.qdir / "smoke.json", res)
    return _timed(t0, res)


def eval_settings(ctx: RunContext, runtime: str | None) -> Any:
    """The run's evaluation settings on `runtime` (a target's; None: the run's own)."""
    return ctx.cfg.eval if runtime is None else ctx.cfg.eval.model_copy(update={"runtime": runtime})


def step_evaluate(ctx: RunContext, which: str, model_path: Path, model_sha: str,
                  publish: bool = True, runtime: str | None = None, on: str = "report") -> dict[str, Any]:
    """COCO evaluation of one model on `runtime`, cached by model bytes, image bytes, annotations and
    settings (the runtime among them). The FP32 ONNX model describes inputs and outputs of a model
    that is not ONNX itself (an OpenVINO IR). `on`: "report", the run's evaluated images, or
    "selection", the images auto mode chooses on (never published into the run folder)."""
    t0 = time.perf_counter()
    cfg = ctx.cfg
    settings = eval_settings(ctx, runtime)
    if on == "selection":
        g = ctx.guard or {}
        images, annotations, subset = Path(g["images"]), Path(g["annotations"]), g["subset"]
        image_sha, ann_sha, publish = g["image_sha256"], g["annotations_sha256"], False
    else:
        images, annotations, subset = Path(cfg.images), Path(cfg.annotations), cfg.subset  # type: ignore[arg-type]
        image_sha, ann_sha = ctx.model["eval_image_sha256"], ctx.model["annotations_sha256"]
    key = cache_key("evaluate", {"model": model_sha, "annotations": ann_sha, "images": image_sha, "subset": subset,
                                 "subset_seed": cfg.subset_seed, "settings": settings.model_dump(),
                                 "versions": ctx.key_versions})
    entry = ctx.cache.get("evaluate", key)
    cached = entry is not None
    if entry is None:
        with Progress(f"evaluate {which}" + (" (auto mode's selection images)" if on == "selection" else "")) as progress:
            metrics = evaluate_model(model_path, images, annotations, subset, settings, cfg.subset_seed,
                                     progress, io_model=Path(cfg.model))
        fault_point(f"{which}-eval-computed")  # metrics in memory, nothing published yet
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            atomic_write_json(Path(td) / "metrics.json", metrics)
            entry = ctx.cache.put("evaluate", key, {"metrics.json": Path(td) / "metrics.json"}, {})
    if publish:
        atomic_copy(entry.file("metrics.json"), ctx.run_dir / f"{which}-coco" / "metrics.json")
    metrics = json.loads(entry.file("metrics.json").read_text())
    metrics["cached"] = cached
    return _timed(t0, metrics)


def direct(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a step as a plain call (the flow passes a caller that wraps each step in a Prefect task)."""
    return fn(*args)


def step_report(ctx: RunContext, calib: dict[str, Any], targets: dict[str, dict[str, Any]],
                fp32: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """summary.json and report.md, with the regression gate's verdict in them.

    `targets` maps each target to its {"quant", "smoke", "int8"} results, in the run's target order."""
    from tasks.run.report import build_summary, regression_gate, write_report

    summary = build_summary(ctx, calib, targets, fp32, ctx.cache.corrupt)
    summary.update(extra)
    summary["gate"] = regression_gate(summary, ctx.cfg.max_map_drop)
    write_report(ctx.run_dir, summary)
    return summary


def _raw_quantize(ctx: RunContext, calib: dict[str, Any], target_name: str, settings: Any = None) -> dict[str, Any]:
    """The quantizer's own output for a target (cached, not published): the target's finish step
    (`_finish`) makes the model it ships."""
    from tasks.targets import target

    return target(target_name).build(ctx, calib, settings)


def _finish(ctx: RunContext, calib: dict[str, Any], raw: dict[str, Any], extra_float: list[str] | None = None,
            publish: bool = True) -> dict[str, Any]:
    """A target's quantizer output -> the model it ships (recovery; `extra_float` layers in float)."""
    from tasks.targets import target

    return target(raw["target"]).finish(ctx, calib, raw, extra_float, publish)


def run_int8(cfg: RunConfig) -> dict[str, Any]:
    """The whole run without Prefect (benchmarks and tests compare the flow against this)."""
    from tasks.run.rundir import set_run_state

    from tasks.pipeline import execute

    ctx = prepare_run(cfg)
    try:
        summary = execute(ctx)
        if not summary["gate"]["passed"]:
            raise RegressionGateError(summary["gate"]["message"])
    except BaseException as e:
        set_run_state(ctx.run_dir, "failed", error=f"{type(e).__name__}: {e}")
        raise
    set_run_state(ctx.run_dir, "completed")
    return summary


def step_layer_stats(ctx: RunContext, calib: dict[str, Any], raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-layer statistics of a quantizer's output on the calibration samples (tasks/quantization/recovery.py),
    cached by the FP32 and Q/DQ model bytes, the calibration bytes and the sample count."""
    from tasks.quantization.recovery import compute_stats, stats_from_arrays, stats_to_arrays

    cfg, m = ctx.cfg, ctx.model
    n = min(cfg.recovery.stats_samples, calib["count"])
    key = cache_key("layer-stats", {"model": m["sha256"], "qdq": raw["sha256"], "calib": calib["sha256"],
                                    "samples": n, "version": RECOVERY_VERSION, "versions": ctx.key_versions})
    entry = ctx.cache.get("layer-stats", key)
    if entry is None:
        arr = _calib_array(ctx, calib)
        samples = [np.asarray(arr[i:i + 1], dtype=np.float32) for i in range(n)]
        stats = compute_stats(Path(cfg.model), Path(raw["onnx"]), samples, m["input"], cfg.eval.threads)
        shifts, meta = stats_to_arrays(stats)
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            np.savez(Path(td) / "shifts.npz", **{f"s{i}": v for i, v in enumerate(shifts.values())})
            atomic_write_json(Path(td) / "stats.json", {"layers": list(shifts), "meta": meta})
            entry = ctx.cache.put("layer-stats", key, {"shifts.npz": Path(td) / "shifts.npz",
                                                       "stats.json": Path(td) / "stats.json"}, {})
    js = json.loads(entry.file("stats.json").read_text())
    with np.load(entry.file("shifts.npz")) as z:
        shifts = {name: z[f"s{i}"] for i, name in enumerate(js["layers"])}
    return stats_from_arrays(shifts, js["meta"])


# Part of the recovery cache keys: raised whenever the same inputs start giving another model.
RECOVERY_VERSION = 1


def step_refine(ctx: RunContext, calib: dict[str, Any], raw: dict[str, Any], extra_float: list[str] | None = None,
                publish: bool = True) -> dict[str, Any]:
    """A target's quantizer output -> the model that is evaluated and shipped (tasks/quantization/recovery.py):
    half-float layers fixed, NSR rule and `extra_float` layers in float, bias correction. Cached."""
    from tasks.quantization.recovery import refine

    t0 = time.perf_counter()
    cfg, target = ctx.cfg, raw["target"]
    rs = cfg.recovery
    bc = target in rs.bias_correction
    dq_only = target == "tensorrt" and cfg.quant.dq_only
    extra = sorted(extra_float or [])
    key = cache_key("refine", {"model": ctx.model["sha256"], "qdq": raw["sha256"], "calib": calib["sha256"],
                               "target": target, "bias_correction": bc, "above": rs.float_nsr_above,
                               "cap": rs.float_mac_cap, "head": rs.head_float, "samples": rs.stats_samples, "extra_float": extra,
                               "dq_only": dq_only, "version": RECOVERY_VERSION, "versions": ctx.key_versions})
    entry = ctx.cache.get("refine", key)
    cached = entry is not None
    if entry is None:
        stats = step_layer_stats(ctx, calib, raw)
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            tdir = Path(td)
            rec = refine(Path(cfg.model), Path(raw["onnx"]), stats, tdir / "model.onnx", target, rs, extra, dq_only)
            conf = {**raw["config"], "recovery": {k: v for k, v in rec.items() if k not in ("qdq", "mac")},
                    "output_sha256": sha256_file(tdir / "model.onnx"), "raw_sha256": raw["sha256"],
                    "refine_cache_key": key}
            atomic_write_json(tdir / "config.json", conf)
            atomic_write_json(tdir / "qdq-summary.json", {**rec["qdq"], **rec["mac"]})
            files = {"model.onnx": tdir / "model.onnx", "config.json": tdir / "config.json",
                     "qdq-summary.json": tdir / "qdq-summary.json"}
            raw_entry = Path(raw["entry"])
            for name in raw["files"]:  # the quantizer's log and calibration cache travel with it
                if name not in files:
                    files[name] = raw_entry / name
            entry = ctx.cache.put("refine", key, files, {})
    res = _quant_result(entry, cached and raw["cached"], target, settings=raw.get("settings"))
    if publish:
        res = publish_quantized(ctx, res)
    return _timed(t0, res)


def _sensitivity_rows(ctx: RunContext, calib: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """The per-layer ranking (most sensitive first) and its summary by module."""
    import onnx

    from tasks.quantization.layers import convs_of, layer_macs
    from tasks.quantization.recovery import ranking
    from tasks.quantization.sensitivity import block_summary

    stats = step_layer_stats(ctx, calib, raw)
    fp = onnx.load(str(ctx.cfg.model))
    rows = ranking(stats, layer_macs(fp), convs_of(fp))
    return {"metric": "local noise-to-signal ratio of each layer's output (FP32 inputs, its own Q/DQ), on "
                      f"{min(ctx.cfg.recovery.stats_samples, calib['count'])} calibration samples",
            "layers": rows, "blocks": block_summary(rows)}


def step_sensitivity(ctx: RunContext, calib: dict[str, Any], raw: dict[str, Any],
                     quant: dict[str, Any]) -> dict[str, Any]:
    """Layers ranked by quantization sensitivity; JSON and PNG in the target's quantize folder."""
    from tasks.quantization.sensitivity import plot_sensitivity

    sens = _sensitivity_rows(ctx, calib, raw)
    from tasks.targets import target

    qdir = ctx.run_dir / target(quant["target"]).qdir
    atomic_write_json(qdir / "sensitivity.json", sens)
    plot_sensitivity(sens["blocks"], qdir / "sensitivity.png")
    return sens


def _candidate_row(name: str, method: str, layers: list[str], quant: dict[str, Any],
                   metrics: dict[str, Any], fp32: dict[str, Any]) -> dict[str, Any]:
    """A candidate as scored on the selection images, against FP32 on the same images."""
    return {"name": name, "method": method, "float_layers": layers,
            "map50_95": metrics["map50_95"], "map50": metrics["map50"],
            "drop_points": round((fp32["map50_95"] - metrics["map50_95"]) * 100, 3),
            "delta_map50_95_ci": paired_interval(fp32.get("bootstrap"), metrics.get("bootstrap"), "map50_95"),
            "latency_p50_ms": metrics["latency_ms"]["p50"],
            "int8_conv_mac_share": quant["qdq"].get("int8_conv_mac_share"),
            "quantized_conv_share": quant["qdq"].get("conv_quantized_share"),
            "qdq_sha256": quant["sha256"], "cached": bool(quant["cached"] and metrics.get("cached"))}


def _plain_call(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def step_accuracy_guard(ctx: RunContext, calib: dict[str, Any], raw: dict[str, Any], quant: dict[str, Any],
                        fp32: dict[str, Any], int8: dict[str, Any], call: Callable[..., Any] = _plain_call,
                        evaluate: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Auto mode for one target: fit INT8 into the mAP budget keeping as much as possible in INT8.

    1. the plain result (recovery included) if it fits;
    2. tensorrt: the other calibration method (ModelOpt max / entropy), the better one kept;
    3. per-layer: the most sensitive layers (local NSR on calibration data) put back in float, the
       count found by bisection over the ranking on the evaluated subset, never below
       `guard_min_mac_share` of convolution MACs in INT8.
    Every candidate is cached; the chosen model is published into the run folder.

    `call(name, fn, *args)` runs each candidate's steps and `evaluate(which, path, sha)` evaluates it:
    plain calls here by default; with a pool of workers the pipeline runs this function in the flow's
    process and passes its own, so each candidate's steps go to the workers and its evaluation is
    sharded over them (the candidates themselves stay in order: each probe of the bisection needs the
    answer of the last)."""
    from tasks.targets import target as target_of

    t0 = time.perf_counter()
    cfg, target = ctx.cfg, raw["target"]
    tgt = target_of(target)
    qdir, which = tgt.qdir, tgt.which
    sfx = which.removeprefix("int8")
    if evaluate is None:
        def evaluate(w: str, path: Path, sha: str, publish: bool = False, on: str = "selection") -> dict[str, Any]:
            return step_evaluate(ctx, w, path, sha, publish, tgt.runtime, on)
    budget = cfg.accuracy_budget
    # Every choice is made on the selection images (tasks/run/guard_data.py), FP32 scored there too;
    # the chosen model is then evaluated on the reported images, which no choice has seen.
    fp32_sel = call(f"accuracy-guard{sfx}-fp32-selection", step_evaluate, ctx, "fp32", Path(cfg.model),
                    ctx.model["sha256"], False, None, "selection")
    fits = (lambda m: (fp32_sel["map50_95"] - m["map50_95"]) * 100 <= budget + 1e-9)  # noqa: E731
    method = tgt.method(raw)
    e0 = evaluate(which, Path(quant["artifact"]), quant["sha256"])
    results: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[str]]] = {
        "base": (raw, quant, e0, [])}
    cands = {"base": _candidate_row(f"plain-{method}", method, [], quant, e0, fp32_sel)}
    best = "base"
    for i, other in enumerate(tgt.alternatives(cfg) if not fits(e0) else []):
        r2 = call(f"accuracy-guard{sfx}-{other.method}-quantize", _raw_quantize, ctx, calib, target, other)
        q2 = call(f"accuracy-guard{sfx}-{other.method}-recover", _finish, ctx, calib, r2, None, False)
        e2 = evaluate(which, Path(q2["artifact"]), q2["sha256"])
        results[f"other{i}"] = (r2, q2, e2, [])
        cands[f"other{i}"] = _candidate_row(f"plain-{other.method}", other.method, [], q2, e2, fp32_sel)
    best = max(results, key=lambda k: results[k][2]["map50_95"])
    # layers are ranked on a Q/DQ ONNX model: the target's own, or (openvino) ModelOpt's of the same model
    ranked_on = results[best][0] if tgt.ranking_from is None else \
        call(f"accuracy-guard{sfx}-ranking-quantize", _raw_quantize, ctx, calib, tgt.ranking_from)
    sens = call(f"accuracy-guard{sfx}-ranking", _sensitivity_rows, ctx, calib, ranked_on)
    chosen = best if fits(results[best][2]) else None
    if chosen is None:
        braw, bq = results[best][0], results[best][1]
        already = set(bq["config"]["recovery"]["float_layers"])
        share = bq["qdq"].get("int8_conv_mac_share", 1.0)
        ranked, spent = [], 0.0
        for r in sens["layers"]:
            if r["layer"] in already or len(ranked) >= cfg.guard_max_exclusions:
                continue
            if share - spent - r["mac_share"] < cfg.min_mac_share(target) - 1e-9:
                continue  # this one would take too much out of INT8: try the next
            ranked.append(r["layer"])
            spent += r["mac_share"]
        m_name = cands[best]["method"]

        def probe(k: int) -> bool:
            key = f"layers{k}"
            if key not in results:
                layers = ranked[:k]
                qk = call(f"accuracy-guard{sfx}-float-{k}-recover", _finish, ctx, calib, braw, layers, False)
                ek = evaluate(which, Path(qk["artifact"]), qk["sha256"])
                results[key] = (braw, qk, ek, layers)
                cands[key] = _candidate_row(f"{m_name}-float-{k}", m_name, layers, qk, ek, fp32_sel)
            return fits(results[key][2])

        lo, hi = 1, len(ranked)  # bisection for the fewest layers that fit (the smallest k, if any)
        found = None
        while lo <= hi:
            mid = (lo + hi) // 2
            if probe(mid):
                found, hi = mid, mid - 1
            else:
                lo = mid + 1
        chosen = f"layers{found}" if found else None
    met = chosen is not None
    if chosen is None:  # nothing fits: keep the most accurate candidate, and say so
        chosen = max(results, key=lambda k: results[k][2]["map50_95"])
    _, cq, _, layers = results[chosen]
    row = cands[chosen]
    cq = publish_quantized(ctx, cq)
    # the chosen model on the reported images (the plain model's evaluation when it was chosen)
    ce = int8 if chosen == "base" else evaluate(which, Path(cq["artifact"]), cq["sha256"], True, "report")
    reason = (f"fits the budget of {budget:g} points" if met else
              f"no candidate fits the budget of {budget:g} points: tried {len(cands)} candidates, at most "
              f"{cfg.guard_max_exclusions} layers in float and at least {cfg.min_mac_share(target):.0%} of convolution "
              f"MACs in INT8; kept the most accurate ({row['name']}, drop {row['drop_points']:.2f} points)")
    guard = {"budget": budget, "met": met, "reason": reason, "target": target,
             "chosen_on": f"{(ctx.guard or {}).get('description', 'the evaluated images')} (method, layer count), "
                          f"calibration samples (recovery, ranking)",
             "selection": {k: (ctx.guard or {}).get(k) for k in ("how", "count", "images", "annotations")},
             "fp32_selection_map50_95": fp32_sel["map50_95"],
             "expected": {"map50_95": -row["drop_points"] / 100, "map50_95_ci": row["delta_map50_95_ci"]},
             "candidates": list(cands.values()), "chosen": row, "float_layers": layers,
             "int8_conv_mac_share": cq["qdq"].get("int8_conv_mac_share"),
             "quantized_conv_share": cq["qdq"].get("conv_quantized_share"), "wall_s": round(time.perf_counter() - t0, 3)}
    atomic_write_json(ctx.run_dir / qdir / "accuracy-guard.json", guard)
    atomic_write_json(ctx.run_dir / qdir / "sensitivity.json", sens)
    from tasks.quantization.sensitivity import plot_sensitivity

    plot_sensitivity(sens["blocks"], ctx.run_dir / qdir / "sensitivity.png")
    return {"quant": cq, "int8": ce, "guard": guard, "sensitivity": sens}
