"""ModelOpt's dq_only on a finished Q/DQ model (tasks/quantize.weights_dq_only): INT8 weights behind a
DequantizeLinear, the same outputs on ONNX Runtime, and refusal where qdq_to_dq would misconvert."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tasks.quantization.quantize import weights_dq_only


def _qdq_conv_model(weight_consumer: str = "Conv") -> onnx.ModelProto:
    """images -> Q/DQ (per-tensor int8) -> Conv whose weight is FP32 -> Q/DQ (per-channel, axis 0), the
    layout ModelOpt writes. Some weights sit exactly on half a step, where rounding must be to even."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    scale = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    w[0, 0, 0, :3] = np.array([0.5, 1.5, -2.5], np.float32) * scale[0]  # ties
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "w_scale"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(1 / 127, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["images", "x_scale", "x_zp"], ["xq"], name="xq"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="xd"),
             helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["wq"], name="wq", axis=0),
             helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wd"], name="wd", axis=0)]
    if weight_consumer == "Conv":
        nodes.append(helper.make_node("Conv", ["xd", "wd", "b"], ["out"], name="conv", pads=[1, 1, 1, 1]))
        out_shape = [1, 4, 8, 8]
    else:  # a weight read by an elementwise op: qdq_to_dq has no axis for it
        nodes.append(helper.make_node("Mul", ["xd", "wd"], ["out"], name="mul"))
        inits[0] = numpy_helper.from_array(w[:1, :, :1, :1].reshape(1, 3, 1, 1), "w")
        inits[1] = numpy_helper.from_array(scale[:1], "w_scale")
        inits[2] = numpy_helper.from_array(np.zeros(1, np.int8), "w_zp")
        out_shape = [1, 3, 8, 8]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


def test_weights_become_int8_behind_their_dq_with_identical_outputs():
    m = _qdq_conv_model()
    out, rec = weights_dq_only(m)
    assert rec["applied"] and rec["weights_int8"] == 1
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 2  # the activation keeps its Q
    w = next(i for i in out.graph.initializer if i.name == "w")
    assert w.data_type == TensorProto.INT8
    wd = next(n for n in out.graph.node if n.name == "wd")
    assert wd.input[0] == "w"
    # ties round half to even, as ONNX QuantizeLinear does
    assert numpy_helper.to_array(w)[0, 0, 0, :3].tolist() == [0, 2, -2]
    x = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(_run(out, x), _run(m, x))
    assert len(out.SerializeToString()) < len(m.SerializeToString()) - 3 * 4 * 27 + 64
    assert next(i for i in m.graph.initializer if i.name == "w").data_type == TensorProto.FLOAT  # input untouched


def test_a_weight_pattern_qdq_to_dq_cannot_convert_is_left_as_qdq_with_the_reason():
    m = _qdq_conv_model("Mul")
    out, rec = weights_dq_only(m)
    assert not rec["applied"] and "Mul" in rec["reason"]
    assert out.SerializeToString() == m.SerializeToString()
