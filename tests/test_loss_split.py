"""bench/loss_split.py's two models on a tiny DQ-only graph: `weights only` keeps no activation Q/DQ and
the INT8 weights; `activations only` keeps the activation Q/DQ and the FP32 weights."""
import importlib.util
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from tasks.quantization.modelopt_ptq import weights_dq_only
from tiny import opset17_model, qdq_conv_model, run_model

_spec = importlib.util.spec_from_file_location("loss_split", Path(__file__).parents[1] / "bench" / "loss_split.py")
loss_split = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loss_split)


def _fp32_twin(qdq: onnx.ModelProto) -> onnx.ModelProto:
    """The same conv, named alike, reading the image and its FP32 weight directly."""
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    conv.input[0], conv.input[1] = "images", "w"
    keep = [conv]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "c",
        [onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.shape[0], w.shape[0], *x.shape[2:]])],  # 3x3, pad 1
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return run_model(opset17_model(g), x, "x")


def test_weights_only_and_activations_only_keep_exactly_their_half():
    qdq = qdq_conv_model()
    fp32 = _fp32_twin(qdq)
    q, _ = weights_dq_only(qdq)
    init = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    w, b, ws = init["w"], init["b"], init["w_scale"]
    w_int8 = np.clip(np.round(w / ws.reshape(-1, 1, 1, 1)), -127, 127) * ws.reshape(-1, 1, 1, 1)
    x = np.random.default_rng(2).random((1, 3, 8, 8), dtype=np.float32) * 1.7  # past the input's range: clipped
    x_q = np.clip(np.round(x * 127), -128, 127) / 127

    wo = loss_split.weights_only(q)
    ops = [n.op_type for n in wo.graph.node]
    assert ops.count("QuantizeLinear") == 0 and ops.count("DequantizeLinear") == 1  # the weight's DQ stays
    np.testing.assert_allclose(run_model(wo, x), _conv(x, w_int8.astype(np.float32), b), rtol=1e-5, atol=1e-5)

    ao = loss_split.activations_only(q, fp32)
    ops = [n.op_type for n in ao.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 1  # the activation's pair
    conv = next(n for n in ao.graph.node if n.op_type == "Conv")
    fw = next(i for i in ao.graph.initializer if i.name == conv.input[1])
    assert fw.data_type == TensorProto.FLOAT
    np.testing.assert_array_equal(numpy_helper.to_array(fw), w)
    np.testing.assert_allclose(run_model(ao, x), _conv(x_q.astype(np.float32), w, b), rtol=1e-5, atol=1e-5)
    # the model given is untouched
    assert [n.op_type for n in q.graph.node].count("QuantizeLinear") == 1


def test_widened_activations_keep_the_grid_and_drop_the_clip():
    """`no clipping` rounds on the same 1/127 grid without clipping; `half step` on a 1/254 grid."""
    qdq = qdq_conv_model()
    ao = loss_split.activations_only(weights_dq_only(qdq)[0], _fp32_twin(qdq))
    init = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    x = np.random.default_rng(3).random((1, 3, 8, 8), dtype=np.float32) * 1.7  # 30% past the 8-bit clip at 1.0
    for step, grid in ((1.0, 127), (0.5, 254)):
        m = loss_split.widened(ao, step)
        pairs = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert len(pairs) == 2 and {n.domain for n in pairs} == {"com.microsoft"}
        zp = next(i for i in m.graph.initializer if i.name == pairs[0].input[2])
        assert zp.data_type == TensorProto.INT16
        expect = _conv((np.round(x * grid) / grid).astype(np.float32), init["w"], init["b"])
        np.testing.assert_allclose(run_model(m, x), expect, rtol=1e-5, atol=1e-5)
    assert [n.domain for n in ao.graph.node if n.op_type == "QuantizeLinear"] == [""]  # the model given is untouched
