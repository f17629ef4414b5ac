"""Prefect flow: FP32 YOLO ONNX -> ModelOpt INT8 Q/DQ ONNX, smoke-checked and COCO-evaluated.

    python flows/int8.py --demo                       # the bundled demo, end to end
    python flows/int8.py --model M.onnx --calib-images DIR --images DIR --annotations JSON
    python flows/int8.py --config run.yaml --method entropy
    python flows/int8.py --demo --target tensorrt,ort-cpu   # both INT8 targets, side by side

Each task is a thin wrapper over a plain function in tasks/steps.py.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Callable

try:
    from flows.common import ROOT, offline_defaults, quiet_library_logs, retry_transient_only  # noqa: F401
except ModuleNotFoundError:  # run as `python flows/int8.py`
    from common import ROOT, offline_defaults, quiet_library_logs, retry_transient_only  # noqa: F401

offline_defaults()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from tasks import steps  # noqa: E402
from tasks.config import ConfigError, RunConfig, build_config, load_yaml_config  # noqa: E402
from tasks.report import console_table, render_markdown, table_rows  # noqa: E402
from tasks.rundir import set_run_state  # noqa: E402

# Our own content-hash cache decides reuse (Prefect's default policy keys on the run id and on path
# strings); Prefect's cache is off so it never serves a stale result for changed file contents.
TASK_OPTS: dict[str, Any] = dict(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient_only,
                                 cache_policy=NO_CACHE, persist_result=False)


@task(name="prepare-run", **TASK_OPTS)
def prepare_task(cfg: RunConfig) -> steps.RunContext:
    return steps.prepare_run(cfg)


def as_task(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """steps.execute's caller: each stage runs as a retryable Prefect task named after it."""
    return task(fn, name=name, **TASK_OPTS)(*args)


def _publish_png(ctx: steps.RunContext) -> None:
    """The sensitivity plot as a Prefect image artifact (inline data URL: no file server needed)."""
    import base64

    from prefect.artifacts import create_image_artifact

    for target in ctx.cfg.targets:
        png = ctx.run_dir / steps.TARGET_LAYOUT[target][1] / "sensitivity.png"
        if png.is_file():
            url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
            create_image_artifact(image_url=url, key=_artifact_key(f"sensitivity-{Path(ctx.cfg.model).stem}-{target}"),
                                  description=f"INT8 sensitivity by module, {target}")


def _artifact_key(text: str) -> str:
    # Prefect artifact keys: lowercase letters, digits and dashes only.
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:60]


@flow(name="yolo-int8")
def int8_flow(config: RunConfig = RunConfig()) -> dict:
    """Quantize a YOLO ONNX export to INT8 with ModelOpt and prove it against FP32 on COCO."""
    logger = get_run_logger()
    quiet_library_logs()
    ctx = prepare_task(config)
    logger.info("run folder: %s", ctx.run_dir)
    try:
        summary = steps.execute(ctx, call=as_task)
        if ctx.cfg.sensitivity or ctx.cfg.accuracy_budget is not None:
            _publish_png(ctx)
        key = _artifact_key(f"int8-{Path(ctx.cfg.model).stem}")
        create_markdown_artifact(markdown=render_markdown(summary), key=f"{key}-report",
                                 description=f"FP32 vs INT8, run {summary['run_id']}")
        create_table_artifact(table=table_rows(summary), key=f"{key}-metrics",
                              description=f"mAP and latency, run {summary['run_id']}")
        logger.info("FP32 vs INT8\n%s", console_table(summary))
        if not summary["gate"]["passed"]:
            # Report and artifacts are written; the run itself must read Failed, with the figures.
            raise steps.RegressionGateError(summary["gate"]["message"])
    except BaseException as e:
        set_run_state(ctx.run_dir, "failed", error=f"{type(e).__name__}: {e}")
        raise
    set_run_state(ctx.run_dir, "completed")
    return summary


def _csv(v: str) -> list[str]:
    return [x.strip() for x in v.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> tuple[Path | None, dict[str, Any]]:
    """Command line -> (config file, values to lay over it). Only options given are set."""
    ap = argparse.ArgumentParser(prog="python flows/int8.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 argument_default=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, help="YAML file of settings (command-line options override it)")
    ap.add_argument("--demo", action="store_true", help="run on the bundled demo model and data")
    ap.add_argument("--model", help="FP32 ONNX export (static 1x3xHxW input)")
    ap.add_argument("--calib", help="calibration tensor .npy/.npz (N x 3 x H x W float32, letterboxed, /255)")
    ap.add_argument("--calib-images", help="folder of calibration images")
    ap.add_argument("--calib-count", type=int, help="images to sample from --calib-images (default 32)")
    ap.add_argument("--calib-seed", type=int, help="seed of the calibration sample and its order (default 0)")
    ap.add_argument("--allow-calib-overlap", action="store_true", help="allow calibration images that are evaluated")
    ap.add_argument("--images", help="evaluation image folder")
    ap.add_argument("--annotations", help="COCO instances JSON")
    ap.add_argument("--subset", help="N, random:N or a file of image ids / names (default: all)")
    ap.add_argument("--target", dest="targets", type=_csv, metavar="tensorrt|ort-cpu",
                    help="what the INT8 model is for: tensorrt (ModelOpt Q/DQ, default), ort-cpu (integer kernels "
                         "on ONNX Runtime's CPU EP), or both comma-separated, evaluated side by side")
    ap.add_argument("--method", choices=["max", "entropy"], help="calibration method (default max)")
    ap.add_argument("--calib-eps", type=_csv, help="calibration EPs in priority order (default cuda:0,cpu)")
    ap.add_argument("--exclude-nodes", nargs="+", help="node-name regexes kept in float (matched from the start)")
    ap.add_argument("--exclude-op-types", nargs="+", help="op types kept in float")
    ap.add_argument("--head-preset", action="store_true",
                    help="tensorrt: ModelOpt keeps the head's final convolutions in float whatever they cost")
    ap.add_argument("--quantize-topk", action="store_true", help="let ModelOpt quantize the TopK inputs too")
    ap.add_argument("--high-precision-dtype", choices=["fp32", "fp16"], help="default fp32 (ORT validation)")
    ap.add_argument("--providers", type=_csv, help="evaluation EPs in priority order (default cuda,cpu)")
    ap.add_argument("--strict-providers", action="store_true", help="fail instead of falling back to CPU")
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    ap.add_argument("--output-format", choices=["auto", "yolov10", "yolov8", "yolov5"])
    ap.add_argument("--class-map", type=lambda v: [int(x) for x in _csv(v)], help="category id per class index")
    ap.add_argument("--ort-reduce-range", dest="reduce_range", choices=["auto", "on", "off"],
                    help="ort-cpu: 7-bit weights (default auto: on for x86 CPUs without VNNI)")
    ap.add_argument("--ort-calibration", dest="ort_calibrate_method", choices=["minmax", "percentile", "entropy"],
                    help="ort-cpu: ONNX Runtime's calibration method for every activation (default minmax)")
    ap.add_argument("--ort-head-preset", action="store_true",
                    help="ort-cpu: ORT keeps the head's final convolutions in float whatever they cost")
    ap.add_argument("--ort-stem-float", choices=["auto", "on", "off"],
                    help="ort-cpu: keep the first convolution in float (default off; auto: with 7-bit weights only)")
    ap.add_argument("--no-head-float", dest="head_float", action="store_false",
                    help="recovery: quantize the head's final convolutions even when keeping them float is cheap")
    ap.add_argument("--run-root", help="where run folders go (default tmp/<model-stem>_lowbit)")
    ap.add_argument("--run-id", help="run folder name (default a timestamp)")
    ap.add_argument("--cache-dir", help="step cache (default <run-root>/.cache)")
    ap.add_argument("--max-map-drop", type=float, help="regression gate: fail when INT8 mAP50-95 is more than "
                                                         "this many points below FP32 (default 1.0)")
    ap.add_argument("--accuracy-budget", type=float, help="auto mode, every target: keep the most sensitive layers "
                                                            "in float until INT8 mAP50-95 is within this many points")
    ap.add_argument("--sensitivity", action="store_true", help="rank layers by quantization sensitivity")
    ap.add_argument("--no-bias-correction", dest="bias_correction", action="store_const", const=[],
                    help="no fast bias correction on any target (on for every target by default)")
    ap.add_argument("--float-nsr-above", type=lambda v: None if v.lower() in ("none", "off") else float(v),
                    help="keep layers whose local noise-to-signal ratio exceeds this in float (default 0.02; off)")
    ap.add_argument("--float-mac-cap", type=float, help="share of convolution MACs the plain run may keep in float "
                                                          "(default 0.03)")
    ap.add_argument("--guard-min-mac-share", type=float, help="auto mode keeps at least this share of convolution "
                                                                "MACs in INT8 (default 0.95)")
    ap.add_argument("--no-gate", dest="max_map_drop", action="store_const", const=None,
                    help="disable the regression gate")
    ns = vars(ap.parse_args(argv))
    config_file = ns.pop("config", None)
    quant_keys = {"method", "calib_eps", "exclude_nodes", "exclude_op_types", "quantize_topk", "high_precision_dtype",
                  "head_preset"}
    eval_keys = {"providers", "strict_providers", "threads", "output_format", "class_map"}
    recovery_keys = {"bias_correction", "float_nsr_above", "float_mac_cap", "head_float"}
    values: dict[str, Any] = {}
    for k, v in ns.items():
        if k == "reduce_range":
            values.setdefault("ort_cpu", {})["reduce_range"] = v
        elif k in ("ort_head_preset", "ort_stem_float", "ort_calibrate_method"):
            values.setdefault("ort_cpu", {})[k.removeprefix("ort_")] = v
        elif k in quant_keys:
            values.setdefault("quant", {})[k] = v
        elif k in eval_keys:
            values.setdefault("eval", {})[k] = v
        elif k in recovery_keys:
            values.setdefault("recovery", {})[k] = v
        else:
            values[k] = v
    return config_file, values


def main(argv: list[str] | None = None) -> int:
    config_file, values = parse_args(argv)
    try:
        cfg = build_config(load_yaml_config(config_file) if config_file else None, values)
        cfg.resolved()  # fail fast, before a Prefect server starts, on a missing model or data
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = int8_flow(config=cfg)
    except Exception as e:  # Prefect has logged the traceback; end with the one-line cause
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print()
    print(console_table(summary))
    print(f"\nrun folder: {summary['run_dir']}")
    print(f"report:     {Path(summary['run_dir']) / 'results' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
