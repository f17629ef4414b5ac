"""The interface every target implements, and what every target does alike with its quantizer's
output: read it from the cache entry, and publish it into the run folder under the target's names.

A target builds its quantizer's own output (cached, not yet in the run folder), finishes it into the
model it ships (recovery, or layers the accuracy guard puts back in float), names the runtime the
evaluator runs that model on, and describes it for the summary and the report. Each target is one
module beside this one; `tasks/targets/table.py` lists them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tasks.run.cache import CacheEntry
from tasks.context import Result, RunContext
from tasks.run.rundir import atomic_copy


@dataclass(frozen=True)
class Target:
    name: str
    suffix: str  # the published model: <model stem>-<suffix> in `folder`
    qdir: str  # the run folder's records of its quantization
    which: str  # its evaluation (<which>-coco) and step names
    runtime: str  # what the evaluator runs its model on (tasks/evaluation/sessions.py)
    folder: str  # where the run folder holds its model
    model_files: tuple[str, ...]  # the cache entry's model files, in the order they are published
    # (ctx, calib, settings | None) -> the quantizer's output, cached, not published; settings:
    # one of `alternatives`, for the accuracy guard
    build: Callable[..., Result]
    # (ctx, calib, raw, extra_float | None, publish) -> the model the target ships
    finish: Callable[..., Result]
    # (cfg, quant) -> the summary's `quantization` section (with `artifact`: the file a user deploys)
    describe: Callable[[Any, Result], Result]
    # (quantization section, calibration record) -> the report's lines about it
    report_lines: Callable[[Result, Result], list[str]]
    # the accuracy guard: other quantizer settings worth a candidate, and the calibration method's name
    alternatives: Callable[[Any], list[Any]] = field(default=lambda cfg: [])
    method: Callable[[Result], str] = field(default=lambda raw: "minmax")
    # the accuracy guard ranks layers on this target's quantizer output (a Q/DQ ONNX model)
    ranking_from: str | None = None
    # Python modules its build and its runtime import (checked before any work)
    requires: tuple[str, ...] = ()
    # (ctx, calib, quant, publish) -> the shipped model with its int8 weights learned block by block
    # (tasks/targets/recover.py step_reconstruct); None where the adapted weights cannot be carried
    reconstruct: Callable[..., Result] | None = None

    @property
    def artifact_file(self) -> str:
        """The model file a runtime is pointed at (an IR's .bin comes first, then its .xml)."""
        return self.model_files[-1]


def model_sha256(files: dict[str, str], names: tuple[str, ...]) -> str:
    """The identity of a model kept in several files (an OpenVINO IR: .xml and .bin): one file's own
    sha256, else the sha256 of the files' hashes in order."""
    if len(names) == 1:
        return files[names[0]]
    return hashlib.sha256("".join(files[n] for n in names).encode()).hexdigest()


def quant_result(entry: CacheEntry, cached: bool, t: Target, **extra: Any) -> Result:
    """A quantize step's result from its cache entry (model still in the cache until published).
    `artifact`: the file the target's runtime loads; `onnx`: the same where that is an ONNX model."""
    path = str(entry.file(t.artifact_file))
    twin = {"evaluated": str(entry.file(EVALUATED_FILE)), "evaluated_sha256": entry.files[EVALUATED_FILE]} \
        if EVALUATED_FILE in entry.files else {}
    return {"artifact": path, "onnx": path if path.endswith(".onnx") else None, "entry": str(entry.path),
            "sha256": model_sha256(entry.files, t.model_files), "cached": cached,
            "config": json.loads(entry.file("config.json").read_text()),
            "qdq": json.loads(entry.file("qdq-summary.json").read_text()), "target": t.name,
            "files": sorted(entry.files), **twin, **extra}


# A finished model's stand-in for the smoke check and the evaluation, where the shipped model cannot be
# judged faithfully on ONNX Runtime (tasks/targets/recover.py float16_model writes it).
EVALUATED_FILE = "evaluated.onnx"


def evaluated_model(quant: Result) -> tuple[Path, str]:
    """The model file the smoke check, the evaluation and the latency step run for a target's result,
    and its sha256: the shipped model, or its evaluation twin where it has one."""
    if "evaluated" in quant:
        return Path(quant["evaluated"]), quant["evaluated_sha256"]
    return Path(quant["artifact"]), quant["sha256"]


def reconstruction_summary(config: Result) -> Result | None:
    """The summary's short record of a reconstructed model (None: not reconstructed)."""
    r = config.get("reconstruction")
    if not r:
        return None
    return {k: r[k] for k in ("samples", "iters", "batch", "crop", "convs_per_block", "drop", "device", "wall_s",
                              "peak_rss_mib", "weights_changed", "weights", "blocks_kept")}


def publish_quantized(ctx: RunContext, quant: Result, t: Target) -> Result:
    """Copy a (cached) quantization result into the run folder under its target's final names: the
    model into the target's folder (an IR's .bin before its .xml, so an .xml is never there without
    its weights), every other file of the entry (config, summary, log, cache) into its quantize folder."""
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
    twin = {"evaluated": str(ctx.run_dir / t.qdir / EVALUATED_FILE)} if "evaluated" in quant else {}
    return {**quant, "artifact": artifact, "onnx": artifact if artifact.endswith(".onnx") else None, **twin}
