"""ModelOpt's dq_only on a finished Q/DQ model (tasks/quantize.weights_dq_only): INT8 weights behind a
DequantizeLinear, the same outputs on ONNX Runtime, and refusal where qdq_to_dq would misconvert."""
import numpy as np
from onnx import TensorProto, numpy_helper

from tasks.quantization.modelopt_ptq import weights_dq_only
from tiny import qdq_conv_model, run_model


def test_weights_become_int8_behind_their_dq_with_identical_outputs():
    m = qdq_conv_model()
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
    np.testing.assert_array_equal(run_model(out, x), run_model(m, x))
    assert len(out.SerializeToString()) < len(m.SerializeToString()) - 3 * 4 * 27 + 64
    assert next(i for i in m.graph.initializer if i.name == "w").data_type == TensorProto.FLOAT  # input untouched


def test_a_weight_pattern_qdq_to_dq_cannot_convert_is_left_as_qdq_with_the_reason():
    m = qdq_conv_model("Mul")
    out, rec = weights_dq_only(m)
    assert not rec["applied"] and "Mul" in rec["reason"]
    assert out.SerializeToString() == m.SerializeToString()
