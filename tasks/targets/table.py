"""The targets a run can build, by name: the one place that lists them."""

from __future__ import annotations

import importlib.util

from tasks.targets import openvino, ort_cpu, tensorrt
from tasks.targets.base import Target

TARGETS: dict[str, Target] = {t.name: t for t in (tensorrt.TARGET, ort_cpu.TARGET, openvino.TARGET)}


def target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}") from None


def missing_modules(name: str) -> list[str]:
    """The modules a target needs that this environment cannot import."""
    return [m for m in target(name).requires if importlib.util.find_spec(m) is None]
