"""Reconstruction on tiny graphs: the torch converter against ONNX Runtime, the learned weights on the
int8 grid of unchanged scales, the quantizers deriving the same model from the adapted weights, the
block error never above round-to-nearest's, and memory flat in the sample count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tasks.config import OrtCpuSettings, QuantSettings
from tasks.quantization.calibration import open_reader
from tasks.quantization.entropy import activation_scales, apply_calibration_cache, write_calibration_cache
from tasks.quantization.modelopt_ptq import run_ptq, weights_dq_only
from tasks.quantization.ort_qdq import build_ort_cpu
from tasks.quantization.reconstruct import Settings, adapted_fp32, plan_blocks, reconstruct
from tasks.quantization.torch_graph import UnsupportedOp, check_supported, quant_weights, whole_graph
from tests.tiny import opset17_model, run_model, tiny_silu_net

ROOT = Path(__file__).resolve().parents[1]
CAL = np.random.default_rng(0).random((8, 3, 64, 64), dtype=np.float32)
FAST = Settings(samples=8, iters=40, batch=2, crop=32, convs_per_block=2, lr=1e-2, seed=0)


def yolo_ops_net() -> onnx.ModelProto:
    """The op types a YOLO backbone and neck use, in one small graph: SiLU convolutions, Split into a
    bottleneck with a residual Add, Concat, SPPF's MaxPool, a nearest Resize by sizes (YOLOv5's
    export) and one by scales, a strided conv, and the head's Reshape/Transpose/Softmax decode."""
    rng = np.random.default_rng(1)
    inits, nodes = [], []

    def conv(name, src, cin, cout, k=3, stride=1):
        inits.extend([numpy_helper.from_array(rng.normal(0, 0.3, (cout, cin, k, k)).astype(np.float32), f"{name}.w"),
                      numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"{name}.b")])
        nodes.extend([helper.make_node("Conv", [src, f"{name}.w", f"{name}.b"], [f"{name}.c"], name=f"{name}/Conv",
                                       pads=[k // 2] * 4, strides=[stride, stride]),
                      helper.make_node("Sigmoid", [f"{name}.c"], [f"{name}.s"], name=f"{name}/Sigmoid"),
                      helper.make_node("Mul", [f"{name}.c", f"{name}.s"], [name], name=f"{name}/Mul")])
        return name

    a = conv("stem", "images", 3, 8, stride=2)
    nodes.append(helper.make_node("Split", [a, "split"], ["s0", "s1"], name="split", axis=1))
    b = conv("m0", "s1", 4, 4)
    nodes.append(helper.make_node("Add", ["s1", b], ["res"], name="res"))
    nodes.append(helper.make_node("Concat", ["s0", "res"], ["cat"], name="cat", axis=1))
    c = conv("down", "cat", 8, 8, stride=2)
    nodes.append(helper.make_node("MaxPool", [c], ["pool"], name="pool", kernel_shape=[5, 5], pads=[2] * 4,
                                  strides=[1, 1]))
    nodes.append(helper.make_node("Resize", ["pool", "", "", "sizes"], ["up"], name="up", mode="nearest",
                                  coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
    nodes.append(helper.make_node("Resize", [c, "", "scales"], ["up2"], name="up2", mode="nearest"))
    nodes.append(helper.make_node("Concat", ["up", "up2", "cat"], ["cat2"], name="cat2", axis=1))
    d = conv("neck", "cat2", 24, 8)
    inits.extend([numpy_helper.from_array(rng.normal(0, 0.3, (16, 8, 1, 1)).astype(np.float32), "head.w"),
                  numpy_helper.from_array(np.array([1, 16, -1], np.int64), "shape"),
                  numpy_helper.from_array(np.array([4, 4], np.int64), "split"),
                  numpy_helper.from_array(np.array([1, 8, 32, 32], np.int64), "sizes"),
                  numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    nodes.extend([helper.make_node("Conv", [d, "head.w"], ["head"], name="head/Conv"),
                  helper.make_node("Reshape", ["head", "shape"], ["flat"], name="flat"),
                  helper.make_node("Transpose", ["flat"], ["t"], name="t", perm=[0, 2, 1]),
                  helper.make_node("Softmax", ["t"], ["output0"], name="softmax", axis=-1)])
    g = helper.make_graph(nodes, "yolo_ops", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 1024, 16])], inits)
    return opset17_model(g)


def _modelopt(tmp_path: Path, fp32: Path) -> onnx.ModelProto:
    """ModelOpt's tensorrt model with int8 weights behind DequantizeLinear (the shipped form)."""
    out = tmp_path / f"{fp32.stem}-qdq.onnx"
    run_ptq(fp32, "images", CAL, QuantSettings(method="max"), out, tmp_path / f"{fp32.stem}.log")
    model, rec = weights_dq_only(onnx.load(str(out)))
    assert rec["applied"]
    return model


def _ort_cpu(tmp_path: Path, fp32: Path) -> onnx.ModelProto:
    out = tmp_path / f"{fp32.stem}-ort.onnx"
    np.save(tmp_path / "cal.npy", CAL)
    build_ort_cpu(fp32, open_reader(tmp_path / "cal.npy", "images"), OrtCpuSettings(reduce_range="off"), out, tmp_path / f"{fp32.stem}-ort.log")
    return onnx.load(str(out))


def _torch(model: onnx.ModelProto, x: np.ndarray, fp32: onnx.ModelProto | None = None, mode: str = "float"):
    runner = whole_graph(model, quant_weights(model, fp32) if fp32 is not None else None)
    with torch.no_grad():
        return [v.numpy() for v in runner({"images": torch.from_numpy(x)}, mode=mode).values()]


def test_converted_graph_equals_onnxruntime_fp32(tmp_path):
    x = CAL[:1]
    for model in (yolo_ops_net(), onnx.load(str(tiny_silu_net(tmp_path / "silu.onnx")))):
        ref = run_model(model, x)
        got = _torch(model, x)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_an_op_outside_the_table_is_named():
    g = helper.make_graph([helper.make_node("Erf", ["images"], ["output0"], name="erf")], "erf",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 8, 8])])
    model = opset17_model(g)
    assert check_supported(model) == ["Erf"]
    with pytest.raises(UnsupportedOp, match="Erf"):
        whole_graph(model)


@pytest.mark.slow
def test_quantized_graph_runs_like_onnxruntime_and_its_float_pass_is_fp32(tmp_path):
    """The Q/DQ model in torch: the target's arithmetic (a few elements may round the other way where
    torch's and ORT's float results straddle half a step), and Q/DQ as identity = the FP32 model."""
    fp32_path = tiny_silu_net(tmp_path / "silu.onnx")
    fp32 = onnx.load(str(fp32_path))
    x = CAL[:2]
    for q in (_modelopt(tmp_path, fp32_path), _ort_cpu(tmp_path, fp32_path)):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for i in range(2):
            ref = sess.run(None, {"images": x[i:i + 1]})[0]
            got = _torch(q, x[i:i + 1], fp32, mode="quant")[0]
            assert np.mean(np.abs(got - ref) > 1e-4) < 0.01
        np.testing.assert_allclose(_torch(q, x[:1], fp32, mode="float")[0], run_model(fp32, x[:1]), rtol=1e-5, atol=1e-5)


def test_blocks_take_their_outputs_before_the_next_quantizer(tmp_path):
    fp32_path = tiny_silu_net(tmp_path / "silu.onnx")
    q = _modelopt(tmp_path, fp32_path)
    learn = quant_weights(q, onnx.load(str(fp32_path)))
    blocks = plan_blocks(q, learn, 2)
    assert [b.convs for b in blocks] == [["/model.0/conv/Conv", "/model.1/conv/Conv"],
                                         ["/model.2/cv2.0/cv2.0.0/conv/Conv", "/model.2/cv2.0/cv2.0.2/Conv"]]
    producer = {o: n for n in q.graph.node for o in n.output}
    for b in blocks:
        assert b.outputs and all(producer[o].op_type not in ("QuantizeLinear", "DequantizeLinear") for o in b.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("build", [_modelopt, _ort_cpu], ids=["modelopt", "ort-cpu"])
def test_learned_weights_stay_on_the_grid_and_the_quantizer_derives_the_same_model(tmp_path, build):
    """After reconstruction every weight is an integer of the same per-channel scale, at most one
    step from round-to-nearest, each channel's extreme kept; scales and placement are untouched; the
    target's quantizer run on the adapted FP32 weights gives the same integers and scales."""
    fp32_path = tiny_silu_net(tmp_path / "silu.onnx")
    fp32 = onnx.load(str(fp32_path))
    q = build(tmp_path, fp32_path)
    adapted, rec = reconstruct(fp32, q, CAL, FAST, tmp_path)
    assert rec.changed > 0, "nothing learned: the test would not see a broken grid"
    before, after = quant_weights(q, fp32), quant_weights(adapted, fp32)
    for name, w in before.items():
        a = after[name]
        np.testing.assert_array_equal(a.scale, w.scale)
        assert np.abs(a.q.astype(int) - w.q.astype(int)).max() <= 1
        per_channel = lambda v: np.abs(v.astype(int)).reshape(v.shape[0], -1).max(1)  # noqa: E731
        np.testing.assert_array_equal(per_channel(a.q), per_channel(w.q))
    # only weight integers (and biases) changed: same nodes, same scales
    assert [(n.op_type, list(n.input)) for n in adapted.graph.node] == [(n.op_type, list(n.input)) for n in q.graph.node]
    scales = {i.name for i in q.graph.initializer if "scale" in i.name}
    for i, j in zip(q.graph.initializer, adapted.graph.initializer):
        if i.name in scales:
            assert i == j
    # the quantizer, run again on the adapted FP32 weights, derives the same integers and scales
    adapted_path = tmp_path / "adapted.onnx"
    onnx.save(adapted_fp32(fp32, adapted), str(adapted_path))
    again = build(tmp_path, adapted_path)
    if build is _modelopt:  # activation ranges from the first run's calibration cache
        cache = tmp_path / "act.cache"
        write_calibration_cache(cache, activation_scales(q))
        p = tmp_path / "again.onnx"
        onnx.save(again, str(p))
        apply_calibration_cache(p, cache)
        again = onnx.load(str(p))
        assert activation_scales(again) == activation_scales(q)
    rebuilt = quant_weights(again, fp32)
    assert set(rebuilt) == set(after)
    for name, w in after.items():
        np.testing.assert_allclose(rebuilt[name].scale, w.scale, rtol=1e-6)
        np.testing.assert_array_equal(rebuilt[name].q, w.q)


@pytest.mark.slow
def test_block_error_after_reconstruction_is_at_most_round_to_nearest(tmp_path):
    fp32_path = tiny_silu_net(tmp_path / "silu.onnx")
    q = _modelopt(tmp_path, fp32_path)
    _, rec = reconstruct(onnx.load(str(fp32_path)), q, CAL, FAST, tmp_path)
    assert rec.blocks
    for b in rec.blocks:  # what ships: the learned rounding only where it is better
        assert b["mse_shipped"] <= b["mse_nearest"]
        assert b["kept"] == (b["mse_learned"] <= b["mse_nearest"])
    # and learning did something: at least one block is strictly better than rounding to nearest
    assert any(b["kept"] and b["mse_learned"] < b["mse_nearest"] for b in rec.blocks)


MEMORY_PROBE = """
import json, resource, sys, threading, time
import numpy as np, onnx
sys.path.insert(0, {root!r})
from tasks.quantization.reconstruct import Settings, reconstruct
fp32, q = onnx.load({fp32!r}), onnx.load({q!r})
n = int(sys.argv[1])
samples = np.lib.format.open_memmap({work!r} + f"/x{{n}}.npy", mode="w+", dtype=np.float32, shape=(n, 3, 256, 256))
for i in range(n):
    samples[i] = np.random.default_rng(i).random((3, 256, 256), dtype=np.float32)
def anon():  # resident memory that is not a file's page (the memory maps are files)
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
peak = [anon()]
stop = threading.Event()
def watch():
    while not stop.wait(0.01):
        peak[0] = max(peak[0], anon())
threading.Thread(target=watch, daemon=True).start()
start = anon()
reconstruct(fp32, q, samples, Settings(samples=n, iters=5, batch=2, crop=64, convs_per_block=2), __import__("pathlib").Path({work!r}))
stop.set()
print(json.dumps({{"start": start, "peak": peak[0]}}))
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_sample_count(tmp_path):
    """Anonymous resident memory (not the streams' memory-mapped files) while reconstructing 4 and 64
    samples of 3x256x256: kept in RAM, the first block's streams alone would take about
    64 x (3 + 8 + 16) x 128 x 128 x 4 bytes ~ 110 MB more at 64 samples; allowed: 40 MB."""
    fp32_path = tiny_silu_net(tmp_path / "silu.onnx")
    # the tiny net at 256x256: the same weights, another input size
    m = onnx.load(str(fp32_path))
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 256
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 256
    m.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 64
    m.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 64
    big = tmp_path / "silu256.onnx"
    onnx.save(m, str(big))
    q = _modelopt(tmp_path, fp32_path)
    qp = tmp_path / "q.onnx"
    onnx.save(q, str(qp))
    script = tmp_path / "probe.py"
    script.write_text(MEMORY_PROBE.format(root=str(ROOT), fp32=str(big), q=str(qp), work=str(tmp_path)))
    growth = {}
    for n in (4, 64):
        out = subprocess.run([sys.executable, str(script), str(n)], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        r = json.loads(out.stdout.strip().splitlines()[-1])
        growth[n] = r["peak"] - r["start"]
    assert growth[64] - growth[4] < 40 * 2**20, growth
