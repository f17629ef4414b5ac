"""What every step of a run shares, at the bottom of the run's layers: the run context (settings, run
folder, cache, versions, the model's identity), step timing, the calibration samples, and storing a
quantizer's output in the cache. Steps and targets import this; it knows neither."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks import __version__
from tasks.config import RunConfig
from tasks.quantization.calibration import CalibReader, open_reader, open_samples
from tasks.run.cache import CacheEntry, StepCache
from tasks.run.progress import Progress
from tasks.run.rundir import atomic_write_json

Result = dict[str, Any]

# Versions that can change a result (prefect cannot): these enter cache keys.
_KEY_DISTS = ("yolo_lowbit", "nvidia-modelopt", "onnxruntime-gpu", "onnxruntime", "onnx", "numpy",
              "opencv-python-headless", "openvino", "nncf")


def versions() -> dict[str, str]:
    out = {"yolo_lowbit": __version__}
    for dist in ("nvidia-modelopt", "onnxruntime-gpu", "onnxruntime", "onnx", "numpy", "pycocotools",
                 "opencv-python-headless", "openvino", "nncf", "prefect", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class RunContext:
    cfg: RunConfig
    run_dir: Path
    cache: StepCache
    versions: dict[str, str]
    model: dict[str, Any] = field(default_factory=dict)
    # auto mode's selection images (tasks/steps/guard_data.py), hashed like the evaluated ones
    guard: dict[str, Any] | None = None

    @property
    def key_versions(self) -> dict[str, str]:
        return {k: self.versions[k] for k in _KEY_DISTS if k in self.versions}


def timed(t0: float, result: Result) -> Result:
    """Record the step's wall time in its result (results travel between Prefect tasks; the context
    object may be copied on the way, so the result is the record)."""
    result["step_wall_s"] = round(time.perf_counter() - t0, 3)
    return result


def calib_array(ctx: RunContext, calib: Result) -> Any:
    """The calibration samples, sliceable; a .npy is read by file offsets, never whole."""
    return open_samples(Path(calib["tensor_path"]), ctx.model["input"])


def calib_reader(ctx: RunContext, calib: Result, label: str) -> CalibReader:
    """The calibration samples one at a time, with a progress line named `label`."""
    reader = open_reader(Path(calib["tensor_path"]), ctx.model["input"])
    reader.progress = Progress(label, unit="samples")
    return reader


def eval_settings(ctx: RunContext, runtime: str | None) -> Any:
    """The run's evaluation settings on `runtime` (a target's; None: the run's own)."""
    return ctx.cfg.eval if runtime is None else ctx.cfg.eval.model_copy(update={"runtime": runtime})


def cache_quantized(ctx: RunContext, stage: str, key: str, calib: Result, tdir: Path, log_name: str,
                    snapshot: Result, rec: Result) -> CacheEntry:
    """Store a quantize step's output in the cache: the model and log its quantizer wrote into `tdir`,
    config.json (the snapshot, with the inputs and versions it came from), qdq-summary.json, and the
    calibration cache where one was written."""
    snapshot = {**snapshot, "inputs": {"model": {"path": str(ctx.cfg.model), "sha256": ctx.model["sha256"]},
                                       "calibration": {"sha256": calib["sha256"], "count": calib["count"]}},
                "versions": ctx.versions, "cache_key": key}
    atomic_write_json(tdir / "config.json", snapshot)
    atomic_write_json(tdir / "qdq-summary.json", rec["qdq"])
    names = ["model.onnx", "config.json", "qdq-summary.json", log_name]
    names += sorted(p.name for p in tdir.glob("*-calibration.cache"))
    return ctx.cache.put(stage, key, {n: tdir / n for n in names}, {"wall_s": rec["wall_s"]})
