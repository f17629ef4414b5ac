"""The order of a run's steps, and which of them may run side by side: the one module that knows it.

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
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from tasks.config import RunConfig
from tasks.evaluation.evaluate import shard_bounds
from tasks.run.cache import StepCache
from tasks.context import RunContext, versions
from tasks.run.rundir import atomic_write_json, create_run_dir, default_run_id, set_run_state, sha256_file
from tasks.steps.calibrate import step_calibration
from tasks.steps.evaluate import latency_fields, step_eval_merge, step_eval_shard, step_evaluate, step_latency
from tasks.steps.guard import step_accuracy_guard, step_sensitivity
from tasks.steps.inputs import check_inputs
from tasks.steps.quantize import finish, raw_quantize, reconstruct_weights
from tasks.steps.report import step_report
from tasks.steps.smoke import step_smoke
from tasks.steps.static_model import static_copy
from tasks.targets.base import evaluated_model
from tasks.targets.table import target


class RegressionGateError(RuntimeError):
    """The INT8 model is worse than the run's budget allows (its report and artifacts are written)."""


def prepare_run(cfg: RunConfig) -> RunContext:
    """Check the inputs, then create the run folder (state: running): bad input leaves no folder."""
    inputs = check_inputs(cfg)
    cfg, eval_files = inputs.cfg, inputs.eval_files
    run_dir = create_run_dir(cfg.run_root, cfg.run_id or default_run_id())
    cfg.run_id = run_dir.name
    atomic_write_json(run_dir / "run-config.json", cfg.model_dump(mode="json"))
    ctx = RunContext(cfg=cfg, run_dir=run_dir, cache=StepCache(cfg.cache_dir), versions=versions())
    setup = inputs.setup
    source, sha = None, sha256_file(cfg.model)
    if setup.dynamic:  # a dynamic-shape export: every step runs its static copy at the run's size
        cfg.model, source = static_copy(Path(cfg.model), sha, setup.in_shape, setup.dynamic, ctx.cache,
                                        ctx.key_versions, run_dir)
        sha = source["static_copy_sha256"]
    ctx.model = {"path": str(cfg.model), "sha256": sha, "input": setup.input_name,
                 "input_shape": list(setup.in_shape), "output_format": setup.fmt,
                 "num_classes": setup.nc, **setup.fmt_info,
                 "eval_image_files": [str(p) for p in eval_files],
                 # hashed once here: both evaluations key their cache entries on these bytes
                 "eval_image_sha256": [sha256_file(p) for p in eval_files],
                 # the annotations as read (a COCO file's bytes, a dataset's labels): both evaluations key on it
                 "annotations_sha256": setup.data.digest, "data": setup.data.record,
                 "classes": setup.classes.as_record()}
    if source is not None:
        ctx.model["source"] = source
    g = inputs.guard
    if g is not None:
        ctx.guard = {"data": g.source.as_record(), "subset": g.subset, "how": g.how,
                     "description": g.description, "count": len(g.files),
                     "image_sha256": [sha256_file(p) for p in g.files], "annotations_sha256": g.digest}
    return ctx


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
    """One target: quantize, recover, evaluate, then (auto mode) guard or (sensitivity on) rank."""
    cfg = ctx.cfg
    # task names follow the target's folders: quantize-int8, coco-eval-int8 (tensorrt, as the INT8
    # flow named them), quantize-int8-ort-cpu, coco-eval-int8-ort-cpu, and so on
    t = target(name)
    qdir, which, rt = t.qdir, t.which, t.runtime
    sfx = which.removeprefix("int8")
    calib = calib_f.result()
    raw = run(qdir, raw_quantize, ctx, calib, name)
    # reconstruction "on": the recovered model is learned further before it is published
    relearn = cfg.reconstruction.mode == "on" and t.reconstruct is not None
    quant = run(f"recover{sfx}", finish, ctx, calib, raw, None, not relearn)
    if relearn:
        recover_s = quant.get("step_wall_s")
        quant = run(f"reconstruct{sfx}", reconstruct_weights, ctx, calib, quant)
        quant = {**quant, "reconstruct_wall_s": quant.get("step_wall_s"), "step_wall_s": recover_s}
    quant = {**quant, "quantize_wall_s": raw.get("step_wall_s")}
    auto = cfg.accuracy_budget is not None
    # in auto mode the smoke check judges the chosen model (a collapsed candidate is for the guard to reject)
    smoke = None if auto else run(f"smoke-inference{sfx}", step_smoke, ctx, calib, quant)
    if not parallel:
        fp32_f.result()  # one at a time: FP32 is evaluated before the first INT8 model
    int8 = _evaluate(run, spawn, ctx, which, *evaluated_model(quant), parallel, runtime=rt)
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
        models = {"fp32": str(cfg.model), **{target(t).which: str(evaluated_model(r["quant"])[0])
                                             for t, r in targets.items()}}
        runtimes = {target(t).which: target(t).runtime for t in targets}
        lat = run("latency", step_latency, ctx, models, runtimes)["models"]
        fp32 = {**fp32, **latency_fields(lat["fp32"])}
        for t, t_res in targets.items():
            which = target(t).which
            t_res["int8"] = {**t_res["int8"], **latency_fields(lat[which])}
    extra = {"runner": cfg.runner, "workers": cfg.workers if parallel else 1, "placement": run.placement}
    summary = run("report", step_report, ctx, calib, targets, fp32, extra)
    return summary


@contextmanager
def run_state(ctx: RunContext) -> Iterator[None]:
    """The run folder's state when the body ends: completed, or failed with the error (re-raised)."""
    try:
        yield
    except BaseException as e:
        set_run_state(ctx.run_dir, "failed", error=f"{type(e).__name__}: {e}")
        raise
    set_run_state(ctx.run_dir, "completed")


def check_gate(summary: dict[str, Any]) -> None:
    """A failed regression gate fails the run (its report and artifacts are written by then)."""
    if not summary["gate"]["passed"]:
        raise RegressionGateError(summary["gate"]["message"])


def run_int8(cfg: RunConfig) -> dict[str, Any]:
    """The whole run without Prefect (benchmarks and tests compare the flow against this)."""
    ctx = prepare_run(cfg)
    with run_state(ctx):
        summary = execute(ctx)
        check_gate(summary)
    return summary
