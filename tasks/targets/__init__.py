"""What a run can build: one module per target behind one small interface, chosen from `TARGETS`.

A target builds its quantizer's own output (cached, not yet in the run folder), finishes it into the
model it ships (recovery, or layers the accuracy guard puts back in float), names the runtime the
evaluator runs that model on, and describes it for the summary and the report. The steps in
`tasks/steps.py` and `tasks/pipeline.py` dispatch through this table; nothing else knows a target
by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

Result = dict[str, Any]


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

    @property
    def artifact_file(self) -> str:
        """The model file a runtime is pointed at (an IR's .bin comes first, then its .xml)."""
        return self.model_files[-1]


def _table() -> dict[str, Target]:
    from tasks.targets import openvino, ort_cpu, tensorrt

    return {t.name: t for t in (tensorrt.TARGET, ort_cpu.TARGET, openvino.TARGET)}


TARGETS: dict[str, Target] = _table()


def missing_modules(name: str) -> list[str]:
    """The modules a target needs that this environment cannot import."""
    import importlib.util

    return [m for m in target(name).requires if importlib.util.find_spec(m) is None]


def target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}") from None
