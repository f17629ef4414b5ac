"""The floor of a SiLU pre-activation's range, for ORT's integer kernels.

ORT quantizes a SiLU (x * sigmoid(x)) in three places: the convolution's output x, the sigmoid's
output and the product, so that QLinearConv, QLinearSigmoid and QLinearMul run back to back. Once
sigmoid(x) is at most half of its own step it rounds to 0, and the product is exactly 0: every x at
or below L = logit(step / 2) (-6.23 for the usual 1/255 step) gives the same output. A calibrated
range for x reaches far below that (YOLOv5n: down to -84, against +79 above), so most of its 256
codes hold values that all end as 0. Raising the range's floor to L changes no output below it and
makes the grid finer everywhere above it.

This is exact on the quantized model's own terms, so it needs no data and no threshold: it reads the
sigmoid's step from its QuantizeLinear and moves only the pre-activation's scale and zero point.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from tasks.quantization.graph import consumer_map

_RANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def zero_below(sigmoid_step: float) -> float:
    """The x at or below which sigmoid(x) <= step / 2, i.e. rounds to the zero code (ties go to even: 0)."""
    half = sigmoid_step / 2
    return math.log(half / (1 - half))


def floored_grid(scale: float, zero_point: int, qmin: int, qmax: int, floor: float) -> tuple[float, int] | None:
    """(scale, zero point) whose lowest code is at or below `floor` and whose highest is at or above the
    old grid's highest value; None when that grid would not be finer than the old one."""
    hi = (qmax - zero_point) * scale
    if (qmin - zero_point) * scale >= floor or hi <= 0:
        return None
    # one code of slack: the zero point is rounded up to put the lowest code below the floor, which
    # may cost the top up to one step
    new_scale = (hi - floor) / (qmax - qmin - 1)
    new_zp = qmin + math.ceil(-floor / new_scale)
    if new_scale >= scale or new_zp > qmax:
        return None
    return new_scale, new_zp


def _scalar(init: dict[str, onnx.TensorProto], node: onnx.NodeProto, k: int) -> np.ndarray | None:
    if len(node.input) <= k or node.input[k] not in init:
        return None
    a = numpy_helper.to_array(init[node.input[k]])
    return a if a.size == 1 else None


def raise_silu_floors(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Raise, in place, the floor of every quantized SiLU pre-activation whose range reaches below where
    the quantized sigmoid is 0. Returns one record per tensor changed."""
    g = model.graph
    init = {i.name: i for i in g.initializer}
    consumers = consumer_map(model)
    out, replaced = [], set()
    for q in list(g.node):
        if q.op_type != "QuantizeLinear" or q.input[0] in init:
            continue
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        users = [u for d in dqs for u in consumers.get(d.output[0], [])]
        sig = [u for u in users if u.op_type == "Sigmoid"]
        mul = [u for u in users if u.op_type == "Mul"]
        if len(sig) != 1 or len(mul) != 1 or len(users) != 2:
            continue  # x feeds something besides its own SiLU: that consumer would see the floor
        sq = consumers.get(sig[0].output[0], [])
        if len(sq) != 1 or sq[0].op_type != "QuantizeLinear":
            continue  # the sigmoid's output is not quantized: nothing rounds it to 0
        sdq = {d.output[0] for d in consumers.get(sq[0].output[0], []) if d.op_type == "DequantizeLinear"}
        if not sdq & set(mul[0].input):
            continue  # the product is not x times this sigmoid
        scale, zp, s_step = _scalar(init, q, 1), _scalar(init, q, 2), _scalar(init, sq[0], 1)
        if scale is None or zp is None or s_step is None or zp.dtype not in _RANGE:
            continue
        qmin, qmax = _RANGE[zp.dtype]
        floor = zero_below(float(s_step))
        grid = floored_grid(float(scale), int(zp), qmin, qmax, floor)
        if grid is None:
            continue
        names = (f"{q.output[0]}_silu_floor_scale", f"{q.output[0]}_silu_floor_zero_point")
        g.initializer.extend([numpy_helper.from_array(np.array(grid[0], np.float32), names[0]),
                              numpy_helper.from_array(np.array(grid[1], zp.dtype), names[1])])
        replaced |= {q.input[1], q.input[2]}
        for node in [q, *dqs]:
            node.input[1], node.input[2] = names
        out.append({"tensor": q.input[0], "old_min": round((qmin - int(zp)) * float(scale), 4), "floor": round(floor, 4),
                    "step_ratio": round(grid[0] / float(scale), 4)})
    if out:  # the replaced scales and zero points, unless something else still reads them
        used = {i for n in g.node for i in n.input}
        kept = [i for i in g.initializer if i.name in used or i.name not in replaced]
        del g.initializer[:]
        g.initializer.extend(kept)
    return out
