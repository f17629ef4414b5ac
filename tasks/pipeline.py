"""The order of a run's steps, and which of them may run side by side.

`execute` is written once for every runner. `call(name, fn, *args)` runs one step and returns its
result (the flow passes a caller that makes each step a Prefect task on its task runner; plain calls
otherwise). With `parallel`, independent chains run from threads of this process, each waiting on
its own steps only: the FP32 evaluation beside calibration and PTQ, each target's chain beside the
others, each evaluation split into shards; the latency of every model is then measured in one step
of its own once nothing else runs. Sequentially, steps run one after another and each evaluation
times its model as it goes.
"""

from __future__ import annotations

import contextvars
import json
import os
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from tasks.evaluation.evaluate import detect_shard, score_shards, shard_bounds, time_models
from tasks.run.cache import cache_key
from tasks.run.faults import fault_point
from tasks.run.progress import Progress
from tasks.run.rundir import atomic_copy, atomic_write_json
from tasks.steps import (RunContext, _finish, _raw_quantize, _timed, eval_settings, step_accuracy_guard,
                         step_calibration, step_evaluate, step_report, step_sensitivity, step_smoke)
from tasks.targets import target

# Keys a step's result may carry back from the process it ran in (see `placed`); `execute` takes
# them off before the result is used.
PLACEMENT, CACHE_DAMAGE = "_placement", "_cache_damage"


def placed(fn: Callable[..., Any], args: tuple[Any, ...], runner: str) -> Any:
    """Run a step and note where it ran and what cache damage it found, in its result: inside a worker
    process the context's cache is a copy, so its reports would otherwise stay there."""
    ctx = args[0] if args and isinstance(args[0], RunContext) else None
    seen = len(ctx.cache.corrupt) if ctx else 0
    result = fn(*args)
    if isinstance(result, dict):
        result = {**result, PLACEMENT: {"host": socket.gethostname(), "pid": os.getpid(), "ppid": os.getppid(),
                                        "runner": runner}}
        if ctx is not None and ctx.cache.corrupt[seen:]:
            result[CACHE_DAMAGE] = ctx.cache.corrupt[seen:]
    return result


class _Deferred:
    """The sequential path's stand-in for a future: the work runs when its result is first asked for,
    so the steps keep the order in which the chains ask (calibration, then each target's quantize,
    recover, smoke, the FP32 evaluation before the first INT8 one, and so on)."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._call: tuple[Callable[..., Any], tuple[Any, ...]] | None = (fn, args)
        self._value: Any = None

    def result(self) -> Any:
        if self._call is not None:
            fn, args = self._call
            self._call = None
            self._value = fn(*args)
        return self._value


class _Spawner:
    """parallel: each chain in a thread of this process, carrying the caller's context (Prefect's
    flow-run context lives in context variables, and a task submitted from a bare thread would have no
    parent run). Sequential: each runs when its result is first needed."""

    def __init__(self, parallel: bool) -> None:
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="chain") if parallel else None

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.pool is None:
            return _Deferred(fn, *args)
        ctx = contextvars.copy_context()
        return self.pool.submit(ctx.run, fn, *args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


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
            res = detect_shard(model_path, cfg.images, cfg.annotations, cfg.subset, settings, cfg.subset_seed,
                               (lo, hi), cfg.worker_threads(), progress, io_model=Path(cfg.model))
        fault_point(f"{which}-shard-computed")  # detections in memory, nothing in the cache yet
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            atomic_write_json(Path(td) / "detections.json", res)
            entry = ctx.cache.put("eval-shard", key, {"detections.json": Path(td) / "detections.json"}, {})
    return _timed(t0, {"entry": str(entry.path), "key": key, "bounds": [lo, hi], "cached": cached})


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
        metrics = score_shards(model_path, cfg.images, cfg.annotations, cfg.subset, settings,
                               cfg.subset_seed, parts, io_model=Path(cfg.model))
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            atomic_write_json(Path(td) / "metrics.json", metrics)
            entry = ctx.cache.put("eval-merge", key, {"metrics.json": Path(td) / "metrics.json"}, {})
    atomic_copy(entry.file("metrics.json"), ctx.run_dir / f"{which}-coco" / "metrics.json")
    metrics = json.loads(entry.file("metrics.json").read_text())
    metrics["cached"] = cached and all(s["cached"] for s in shards)
    return _timed(t0, metrics)


def step_latency(ctx: RunContext, models: dict[str, str], runtimes: dict[str, str] | None = None) -> dict[str, Any]:
    """Every model timed in one step (each on its runtime), in interleaved rounds, when no other step
    of the run is running; each `<which>-coco/metrics.json` of the run gets the figures."""
    t0 = time.perf_counter()
    cfg = ctx.cfg
    images = [Path(p) for p in ctx.model["eval_image_files"][:cfg.latency_images]]
    timed = time_models({w: Path(p) for w, p in models.items()}, images, cfg.eval, cfg.eval.threads,
                        runtimes=runtimes)
    for which, t in timed.items():
        path = ctx.run_dir / f"{which}-coco" / "metrics.json"
        if path.is_file():
            atomic_write_json(path, {**json.loads(path.read_text()), **_latency_fields(t)})
    return _timed(t0, {"models": timed})


def _latency_fields(t: dict[str, Any]) -> dict[str, Any]:
    """What a model's metrics take from the latency step."""
    return {"latency_ms": t["latency_ms"], "latency_measured": _measured(t),
            **{k: t[k] for k in ("latency_deployed_ms", "latency_deployed_session") if k in t}}


def _measured(t: dict[str, Any]) -> dict[str, Any]:
    return {"how": "latency step: every model alone, after all other steps, interleaved rounds",
            "images": t["images"], "rounds": t["rounds"], "threads": t["runtime"]["threads"],
            "cpu": t["runtime"]["cpu"], "runtime": t["runtime"]["runtime"]}


class _Run:
    """One execute call's bookkeeping: each step's placement and cache damage, taken off its result."""

    def __init__(self, ctx: RunContext, call: Callable[..., Any]) -> None:
        self.ctx, self.call = ctx, call
        self.placement: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        res = self.call(name, fn, *args)
        if isinstance(res, dict):
            res = dict(res)
            where, damage = res.pop(PLACEMENT, None), res.pop(CACHE_DAMAGE, [])
            with self._lock:
                if where is not None:
                    self.placement[name] = where
                for d in damage:
                    if d not in self.ctx.cache.corrupt:
                        self.ctx.cache.corrupt.append(d)
        return res


def _evaluate(run: _Run, spawn: _Spawner, ctx: RunContext, which: str, model_path: Path, sha: str,
              parallel: bool, prefix: str = "", runtime: str | None = None, on: str = "report") -> dict[str, Any]:
    """One model's COCO evaluation on `runtime`; with workers, in shards side by side, then merged. A
    guard's candidates (`prefix`) get step names of their own, model hash included; on its selection
    images (`on`) a candidate is evaluated whole, on one worker."""
    tag = f"{prefix}{sha[:8]}-" if prefix else ""
    if on == "selection":
        return run(f"{tag}coco-eval-{which}-selection", step_evaluate, ctx, which, model_path, sha, False, runtime, on)
    if not parallel:
        return run(f"{tag}coco-eval-{which}", step_evaluate, ctx, which, model_path, sha, True, runtime)
    bounds = shard_bounds(len(ctx.model["eval_image_files"]), ctx.cfg.workers)
    futures = [spawn(run, f"{tag}coco-eval-{which}-shard-{i}", step_eval_shard, ctx, which, model_path, sha, list(b),
                     runtime) for i, b in enumerate(bounds)]
    shards = [f.result() for f in futures]
    return run(f"{tag}coco-eval-{which}", step_eval_merge, ctx, which, model_path, sha, shards, runtime)


def _target_chain(run: _Run, spawn: _Spawner, ctx: RunContext, calib_f: Any, fp32_f: Any, name: str,
                  parallel: bool) -> dict[str, Any]:
    """One target: quantize, recover, evaluate, then (auto mode) guard or (--sensitivity) rank."""
    cfg = ctx.cfg
    # task names follow the target's folders: quantize-int8, coco-eval-int8 (tensorrt, as the INT8
    # flow named them), quantize-int8-ort-cpu, coco-eval-int8-ort-cpu, and so on
    t = target(name)
    qdir, which, rt = t.qdir, t.which, t.runtime
    sfx = which.removeprefix("int8")
    calib = calib_f.result()
    raw = run(qdir, _raw_quantize, ctx, calib, name)
    quant = run(f"recover{sfx}", _finish, ctx, calib, raw)
    quant = {**quant, "quantize_wall_s": raw.get("step_wall_s")}
    auto = cfg.accuracy_budget is not None
    # in auto mode the smoke check judges the chosen model (a collapsed candidate is for the guard to reject)
    smoke = None if auto else run(f"smoke-inference{sfx}", step_smoke, ctx, calib, quant)
    if not parallel:
        fp32_f.result()  # one at a time: FP32 is evaluated before the first INT8 model
    int8 = _evaluate(run, spawn, ctx, which, Path(quant["artifact"]), quant["sha256"], parallel, runtime=rt)
    extra: dict[str, Any] = {}
    if auto and parallel:
        # the guard decides here; each candidate's steps run on the workers, its evaluation in shards
        def evaluate(w: str, path: Path, sha: str, publish: bool = False, on: str = "selection") -> dict[str, Any]:
            return _evaluate(run, spawn, ctx, w, path, sha, True, prefix=f"accuracy-guard{sfx}-", runtime=rt, on=on)

        g = step_accuracy_guard(ctx, calib, raw, quant, fp32_f.result(), int8, call=run, evaluate=evaluate)
    elif auto:
        g = run(f"accuracy-guard{sfx}", step_accuracy_guard, ctx, calib, raw, quant, fp32_f.result(), int8)
    if auto:
        quant, int8 = {**g["quant"], "quantize_wall_s": raw.get("step_wall_s")}, g["int8"]
        smoke = run(f"smoke-inference{sfx}", step_smoke, ctx, calib, quant)
        extra = {"sensitivity": g["sensitivity"], "accuracy_guard": g["guard"]}
    elif cfg.sensitivity:
        extra = {"sensitivity": run(f"sensitivity{sfx}", step_sensitivity, ctx, calib, raw, quant)}
    return {"quant": quant, "smoke": smoke, "int8": int8, **extra}


def _direct(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    return placed(fn, args, "sequential")


def execute(ctx: RunContext, call: Callable[..., Any] = _direct, parallel: bool = False) -> dict[str, Any]:
    """Every stage after prepare_run; returns the summary (with `placement`: where each step ran)."""
    cfg = ctx.cfg
    run, spawn = _Run(ctx, call), _Spawner(parallel)
    try:
        calib_f = spawn(run, "calibration", step_calibration, ctx)
        if not parallel:
            calib_f.result()  # a bad calibration set fails before any evaluation starts
        fp32_f = spawn(_evaluate, run, spawn, ctx, "fp32", Path(cfg.model), ctx.model["sha256"], parallel)
        chains = {t: spawn(_target_chain, run, spawn, ctx, calib_f, fp32_f, t, parallel) for t in cfg.targets}
        targets: dict[str, dict[str, Any]] = {t: f.result() for t, f in chains.items()}
        fp32, calib = fp32_f.result(), calib_f.result()
    finally:
        spawn.close()
    if parallel:
        models = {"fp32": str(cfg.model), **{target(t).which: r["quant"]["artifact"] for t, r in targets.items()}}
        runtimes = {target(t).which: target(t).runtime for t in targets}
        lat = run("latency", step_latency, ctx, models, runtimes)["models"]
        fp32 = {**fp32, **_latency_fields(lat["fp32"])}
        for t, t_res in targets.items():
            which = target(t).which
            t_res["int8"] = {**t_res["int8"], **_latency_fields(lat[which])}
    extra = {"runner": cfg.runner, "workers": cfg.workers if parallel else 1, "placement": run.placement}
    summary = run("report", step_report, ctx, calib, targets, fp32, extra)
    return summary

