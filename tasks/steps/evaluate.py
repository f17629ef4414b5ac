"""The evaluation steps: a model's COCO evaluation whole or in shards merged once, and the latency
step that times every model of a run together. Each is cached by the model's and images' bytes."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tasks.evaluation.evaluate import detect_shard, evaluate_model, score_shards, time_models
from tasks.evaluation.sources.base import DataSpec
from tasks.run.cache import cache_key
from tasks.context import RunContext, eval_settings, timed
from tasks.run.faults import fault_point
from tasks.run.progress import Progress
from tasks.run.rundir import atomic_copy, atomic_write_json


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
        source, subset = DataSpec.from_record(g["data"]), g["subset"]
        image_sha, ann_sha, publish = g["image_sha256"], g["annotations_sha256"], False
    else:
        source, subset = cfg.eval_data(), cfg.subset
        image_sha, ann_sha = ctx.model["eval_image_sha256"], ctx.model["annotations_sha256"]
    key = cache_key("evaluate", {"model": model_sha, "annotations": ann_sha, "images": image_sha, "subset": subset,
                                 "subset_seed": cfg.subset_seed, "settings": settings.model_dump(),
                                 "versions": ctx.key_versions})
    entry = ctx.cache.get("evaluate", key)
    cached = entry is not None
    if entry is None:
        with Progress(f"evaluate {which}" + (" (auto mode's selection images)" if on == "selection" else "")) as progress:
            metrics = evaluate_model(model_path, source, subset, settings, cfg.subset_seed,
                                     progress, io_model=Path(cfg.model))
        fault_point(f"{which}-eval-computed")  # metrics in memory, nothing published yet
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            atomic_write_json(Path(td) / "metrics.json", metrics)
            entry = ctx.cache.put("evaluate", key, {"metrics.json": Path(td) / "metrics.json"}, {})
    if publish:
        atomic_copy(entry.file("metrics.json"), ctx.run_dir / f"{which}-coco" / "metrics.json")
    metrics = json.loads(entry.file("metrics.json").read_text())
    metrics["cached"] = cached
    return timed(t0, metrics)


def step_eval_shard(ctx: RunContext, which: str, model_path: Path, model_sha: str, bounds: list[int],
                    runtime: str | None = None) -> dict[str, Any]:
    """Detections of one shard of the evaluated images on `runtime`, cached by the model's bytes, the
    shard's image bytes and the settings that change detections (threads and warm-up do not)."""
    t0 = time.perf_counter()
    cfg = ctx.cfg
    settings = eval_settings(ctx, runtime)
    lo, hi = bounds
    key = cache_key("eval-shard", {
        "model": model_sha, "annotations": ctx.model["annotations_sha256"], "images": ctx.model["eval_image_sha256"][lo:hi],
        "bounds": [lo, hi], "subset": cfg.subset, "subset_seed": cfg.subset_seed,
        "settings": settings.model_dump(exclude={"threads", "warmup", "bootstrap_resamples", "bootstrap_seed"}),
        "versions": ctx.key_versions})
    entry = ctx.cache.get("eval-shard", key)
    cached = entry is not None
    if entry is None:
        with Progress(f"evaluate {which} [{lo}:{hi}]") as progress:
            res = detect_shard(model_path, cfg.eval_data(), cfg.subset, settings, cfg.subset_seed,
                               (lo, hi), cfg.worker_threads(), progress, io_model=Path(cfg.model))
        fault_point(f"{which}-shard-computed")  # detections in memory, nothing in the cache yet
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            atomic_write_json(Path(td) / "detections.json", res)
            entry = ctx.cache.put("eval-shard", key, {"detections.json": Path(td) / "detections.json"}, {})
    return timed(t0, {"entry": str(entry.path), "key": key, "bounds": [lo, hi], "cached": cached})


def step_eval_merge(ctx: RunContext, which: str, model_path: Path, model_sha: str,
                    shards: list[dict[str, Any]], runtime: str | None = None) -> dict[str, Any]:
    """The shards' detections merged and scored once with pycocotools (cached by the shard keys);
    latency is the latency step's."""
    t0 = time.perf_counter()
    cfg = ctx.cfg
    settings = eval_settings(ctx, runtime)
    key = cache_key("eval-merge", {"shards": [s["key"] for s in shards], "versions": ctx.key_versions,
                                   "bootstrap": [settings.bootstrap_resamples, settings.bootstrap_seed]})
    entry = ctx.cache.get("eval-merge", key)
    cached = entry is not None
    if entry is None:
        parts = [json.loads((Path(s["entry"]) / "detections.json").read_text()) for s in shards]
        metrics = score_shards(model_path, cfg.eval_data(), cfg.subset, settings,
                               cfg.subset_seed, parts, io_model=Path(cfg.model))
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            atomic_write_json(Path(td) / "metrics.json", metrics)
            entry = ctx.cache.put("eval-merge", key, {"metrics.json": Path(td) / "metrics.json"}, {})
    atomic_copy(entry.file("metrics.json"), ctx.run_dir / f"{which}-coco" / "metrics.json")
    metrics = json.loads(entry.file("metrics.json").read_text())
    metrics["cached"] = cached and all(s["cached"] for s in shards)
    return timed(t0, metrics)


def step_latency(ctx: RunContext, models: dict[str, str], runtimes: dict[str, str] | None = None) -> dict[str, Any]:
    """Every model timed in one step (each on its runtime), in interleaved rounds, when no other step
    of the run is running; each `<which>-coco/metrics.json` of the run gets the figures."""
    t0 = time.perf_counter()
    cfg = ctx.cfg
    images = [Path(p) for p in ctx.model["eval_image_files"][:cfg.latency_images]]
    measured = time_models({w: Path(p) for w, p in models.items()}, images, cfg.eval, cfg.eval.threads,
                           runtimes=runtimes, size_hw=tuple(ctx.model["input_shape"][2:]))
    for which, t in measured.items():
        path = ctx.run_dir / f"{which}-coco" / "metrics.json"
        if path.is_file():
            atomic_write_json(path, {**json.loads(path.read_text()), **latency_fields(t)})
    return timed(t0, {"models": measured})


def latency_fields(t: dict[str, Any]) -> dict[str, Any]:
    """What a model's metrics take from the latency step."""
    return {"latency_ms": t["latency_ms"], "latency_measured": _measured(t),
            **{k: t[k] for k in ("latency_deployed_ms", "latency_deployed_session") if k in t}}


def _measured(t: dict[str, Any]) -> dict[str, Any]:
    return {"how": "latency step: every model alone, after all other steps, interleaved rounds",
            "images": t["images"], "rounds": t["rounds"], "threads": t["runtime"]["threads"],
            "cpu": t["runtime"]["cpu"], "runtime": t["runtime"]["runtime"]}
