"""A target's two quantize steps, dispatched by name through the target table: its quantizer's own
output, and the model it ships. Step functions of their own (not the targets' methods) so that a
runner can name them and send them to a worker process."""

from __future__ import annotations

from typing import Any

from tasks.context import Result, RunContext
from tasks.targets.table import target


def raw_quantize(ctx: RunContext, calib: Result, target_name: str, settings: Any = None) -> Result:
    """The quantizer's own output for a target (cached, not published): `finish` makes the model it ships."""
    return target(target_name).build(ctx, calib, settings)


def finish(ctx: RunContext, calib: Result, raw: Result, extra_float: list[str] | None = None,
           publish: bool = True) -> Result:
    """A target's quantizer output -> the model it ships (recovery; `extra_float` layers in float)."""
    return target(raw["target"]).finish(ctx, calib, raw, extra_float, publish)


def reconstruct_weights(ctx: RunContext, calib: Result, quant: Result, publish: bool = True) -> Result:
    """A target's shipped Q/DQ model -> the same model with its int8 weights learned on the
    calibration samples (targets without a reconstruction return the model as it is)."""
    t = target(quant["target"])
    return t.reconstruct(ctx, calib, quant, publish) if t.reconstruct is not None else quant
