"""The Prefect flow yolo-int8: FP32 YOLO ONNX -> INT8 for each target, smoke-checked and COCO-evaluated.
Its command line is flows/int8.py (which checks the inputs before this module loads Prefect); the
deployments in prefect.yaml point here. Each task is a thin wrapper over a plain function in tasks/
(the order: tasks/pipeline.py)."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path
from typing import Any, Callable

# `python flows/int8_flow.py` puts flows/ on the path, not the repository root: add it, so that this file and
# worker processes name the same modules (flows.common, never a bare `common` a worker cannot import).
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.common import (ROOT, api_for_workers, ensure_prefect_home, offline_defaults,  # noqa: E402,F401
                          quiet_library_logs)
from flows.runners import RUNNERS  # noqa: E402

offline_defaults()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from flows.step_tasks import retry_transient_only, run_step  # noqa: E402

from tasks.config import RunConfig  # noqa: E402
from tasks.pipeline import check_gate, execute, prepare_run, run_state  # noqa: E402
from tasks.context import RunContext  # noqa: E402
from tasks.steps.report import console_table, render_markdown, table_rows  # noqa: E402
from tasks.targets.table import TARGETS  # noqa: E402

# Our own content-hash cache decides reuse (Prefect's default policy keys on the run id and on path
# strings); Prefect's cache is off so it never serves a stale result for changed file contents.
TASK_OPTS: dict[str, Any] = dict(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient_only,
                                 cache_policy=NO_CACHE, persist_result=False)


@task(name="prepare-run", **TASK_OPTS)
def prepare_task(cfg: RunConfig) -> RunContext:
    return prepare_run(cfg)


def step_caller(runner: Any, runner_name: str) -> Callable[..., Any]:
    """pipeline.execute's caller: each step runs as a retryable Prefect task named after it, in the
    flow's thread (no task runner) or submitted to the runner's workers."""
    def call(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        t = task(run_step, name=name, **TASK_OPTS)
        if runner is None:
            return t(fn, args, runner_name)
        return runner.submit(t, parameters={"fn": fn, "args": args, "runner": runner_name}).result()

    return call


def _publish_png(ctx: RunContext) -> None:
    """The sensitivity plot as a Prefect image artifact (inline data URL: no file server needed)."""
    from prefect.artifacts import create_image_artifact

    for target in ctx.cfg.targets:
        png = ctx.run_dir / TARGETS[target].qdir / "sensitivity.png"
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
    with run_state(ctx):
        with RUNNERS[ctx.cfg.runner](ctx.cfg) as runner:
            summary = execute(ctx, call=step_caller(runner, ctx.cfg.runner), parallel=runner is not None)
        if ctx.cfg.sensitivity or ctx.cfg.accuracy_budget is not None:
            _publish_png(ctx)
        key = _artifact_key(f"int8-{Path(ctx.cfg.model).stem}")
        create_markdown_artifact(markdown=render_markdown(summary), key=f"{key}-report",
                                 description=f"FP32 vs INT8, run {summary['run_id']}")
        create_table_artifact(table=table_rows(summary), key=f"{key}-metrics",
                              description=f"mAP and latency, run {summary['run_id']}")
        logger.info("FP32 vs INT8\n%s", console_table(summary))
        # report and artifacts are written; the run itself must read Failed, with the figures
        check_gate(summary)
    return summary


def run(cfg: RunConfig) -> int:
    """Run the flow on checked settings (flows/int8.py checks them first) and print its table; the exit
    code: 0, or 1 when the run failed (Prefect has logged the traceback; the last line is the cause)."""
    ensure_prefect_home()
    try:
        if cfg.runner == "sequential":
            summary = int8_flow(config=cfg)
        else:
            with api_for_workers():
                summary = int8_flow(config=cfg)
    except Exception as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print()
    print(console_table(summary))
    print(f"\nrun folder: {summary['run_dir']}")
    print(f"report:     {Path(summary['run_dir']) / 'results' / 'report.md'}")
    return 0
