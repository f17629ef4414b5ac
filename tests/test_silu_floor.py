"""tasks/quantization/silu_floor.py on a hand-built quantized SiLU (x -> Q/DQ -> Sigmoid -> Q/DQ ->
Mul(x, sigmoid) -> Q/DQ, ORT's layout): below the floor every output is 0 before and after, above it
the grid is finer, and an x that feeds anything besides its SiLU is left alone."""
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tasks.quantization.silu_floor import floored_grid, raise_silu_floors, zero_below
from tiny import opset17_model, run_model

X_LO, X_HI = -40.0, 10.0  # a pre-activation range reaching far below where SiLU is 0, like YOLOv5n's


def _silu_model(extra_consumer: bool = False, sigmoid_quantized: bool = True) -> onnx.ModelProto:
    xs = (X_HI - X_LO) / 255
    inits = [numpy_helper.from_array(np.array(xs, np.float32), "xs"),
             numpy_helper.from_array(np.array(round(-X_LO / xs), np.uint8), "xz"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "ss"),
             numpy_helper.from_array(np.array(0, np.uint8), "sz"),
             numpy_helper.from_array(np.array((X_HI + 0.3) / 255, np.float32), "ys"),
             numpy_helper.from_array(np.array(round(0.3 / ((X_HI + 0.3) / 255)), np.uint8), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="xq"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="xd"),
             helper.make_node("Sigmoid", ["xd"], ["s"], name="sig")]
    if sigmoid_quantized:
        nodes += [helper.make_node("QuantizeLinear", ["s", "ss", "sz"], ["sq"], name="sq"),
                  helper.make_node("DequantizeLinear", ["sq", "ss", "sz"], ["sd"], name="sd")]
    nodes += [helper.make_node("Mul", ["xd", "sd" if sigmoid_quantized else "s"], ["m"], name="mul"),
              helper.make_node("QuantizeLinear", ["m", "ys", "yz"], ["mq"], name="mq"),
              helper.make_node("DequantizeLinear", ["mq", "ys", "yz"], ["y"], name="md")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])]
    if extra_consumer:
        nodes.append(helper.make_node("Add", ["xd", "xd"], ["z"], name="add"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4096]))
    return opset17_model(helper.make_graph(
        nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])], outputs, inits))


def test_the_floor_is_where_the_sigmoid_rounds_to_zero():
    s = 1 / 255
    f = zero_below(s)
    assert f == pytest.approx(-6.2324, abs=1e-4)  # ln((1/510) / (509/510))
    assert 1 / (1 + math.exp(-f)) == pytest.approx(s / 2, rel=1e-9)


def test_the_floored_grid_reaches_the_floor_and_the_old_top_with_a_finer_step():
    scale, zp = 50 / 255, 204  # [-40, 10] on uint8
    new_scale, new_zp = floored_grid(scale, zp, 0, 255, -6.2324)
    assert (0 - new_zp) * new_scale <= -6.2324  # the lowest code is at or below the floor
    assert (255 - new_zp) * new_scale >= (255 - zp) * scale - 1e-6  # the top is kept
    assert new_scale == pytest.approx((10 + 6.2324) / 254) and new_scale < scale / 3
    assert floored_grid(12 / 255, 51, 0, 255, -6.2324) is None  # [-2.4, 9.6]: already above the floor
    assert floored_grid(16.25 / 255, 98, 0, 255, -6.2324) is None  # [-6.245, 10]: a floor 0.01 below buys no finer grid


def test_outputs_below_the_floor_stay_zero_and_above_it_get_closer_to_silu():
    m = _silu_model()
    before = onnx.ModelProto()
    before.CopyFrom(m)
    recs = raise_silu_floors(m)
    assert [r["tensor"] for r in recs] == ["x"] and recs[0]["floor"] == pytest.approx(-6.2324, abs=1e-4)
    x = np.linspace(X_LO, X_HI, 4096, dtype=np.float32)[None]
    y0, y1 = run_model(before, x, "x"), run_model(m, x, "x")
    low = x <= -6.25
    assert (y0[low] == 0).all() and (y1[low] == 0).all()  # nothing changes where SiLU already rounded to 0
    silu = x / (1 + np.exp(-x))
    err0, err1 = np.abs(y0 - silu)[~low].mean(), np.abs(y1 - silu)[~low].mean()
    assert err1 < 0.85 * err0, (err0, err1)
    # the old scale and zero point are gone; the new ones are read by the Q and its DQ
    names = {i.name for i in m.graph.initializer}
    assert "xs" not in names and "xz" not in names
    q, dq = (next(n for n in m.graph.node if n.name == k) for k in ("xq", "xd"))
    assert q.input[1:] == dq.input[1:] and q.input[1] in names


@pytest.mark.parametrize("kind", ["extra consumer", "float sigmoid"])
def test_a_pre_activation_read_elsewhere_or_an_unquantized_sigmoid_is_left_alone(kind):
    m = _silu_model(extra_consumer=kind == "extra consumer", sigmoid_quantized=kind != "float sigmoid")
    before = m.SerializeToString()
    assert raise_silu_floors(m) == [] and m.SerializeToString() == before
