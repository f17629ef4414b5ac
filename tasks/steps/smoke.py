"""The smoke step: FP32 and INT8 side by side on a few calibration samples, on the target's runtime."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from tasks.evaluation.smoke import smoke_compare
from tasks.context import RunContext, calib_array, eval_settings, timed
from tasks.run.rundir import atomic_write_json
from tasks.targets.base import evaluated_model
from tasks.targets.table import target


def step_smoke(ctx: RunContext, calib: dict[str, Any], quant: dict[str, Any]) -> dict[str, Any]:
    """FP32 vs INT8 on the first few calibration samples, both on the target's runtime; raises
    SmokeError on a broken INT8 model."""
    t0 = time.perf_counter()
    cfg, m = ctx.cfg, ctx.model
    t = target(quant["target"])
    arr = calib_array(ctx, calib)
    samples = np.asarray(arr[: cfg.smoke_samples], dtype=np.float32)
    res = smoke_compare(Path(cfg.model), evaluated_model(quant)[0], m["input"], samples, m["output_format"],
                        eval_settings(ctx, t.runtime), conf=cfg.smoke_conf,
                        threads=cfg.eval.threads)
    atomic_write_json(ctx.run_dir / t.qdir / "smoke.json", res)
    return timed(t0, res)
