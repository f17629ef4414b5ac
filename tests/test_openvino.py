"""The openvino target: NNCF INT8 IRs whose convolutions OpenVINO's CPU plugin runs as integer
kernels, read back from its compiled runtime graph (structural asserts on tiny graphs)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from tiny import tiny_silu_net


def _samples(model: onnx.ModelProto, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    return [rng.random(shape, dtype=np.float32) for _ in range(n)]


def _build(path, tmp_path, float_layers=(), decode_float=True):
    from tasks.quantization.nncf_ptq import conv_summary, ignored_scope, nncf_quantize

    m = onnx.load(str(path))
    scope = ignored_scope(m, [], [], list(float_layers), decode_float, sigmoid_float=True)
    xml = tmp_path / "q.xml"
    rec = nncf_quantize(path, _samples(m), 8, xml, scope, "mixed", "full")
    return m, xml, rec, conv_summary(m, xml, threads=1)


def test_every_convolution_of_a_tiny_graph_runs_as_an_int8_primitive(tmp_path):
    net = tiny_silu_net(tmp_path / "silu.onnx")
    m, xml, rec, s = _build(net, tmp_path)
    convs = [n.name for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) >= 2
    assert s["convs"] == len(convs) and s["int8_convs"] == len(convs), s
    assert s["int8_conv_mac_share"] == 1.0 and s["float_convs"] == []
    # each runtime convolution takes 8-bit input into an integer oneDNN primitive
    for key in s["runtime_primitives"]:
        prec, prim = key.split(" ", 1)
        assert prec in ("u8", "i8") and "8" in prim.lower().rsplit("_", 1)[-1], key
    assert xml.with_suffix(".bin").is_file() and "nncf" in rec["tool"]


def test_a_layer_kept_in_float_runs_as_a_float_primitive(tmp_path):
    net = tiny_silu_net(tmp_path / "silu.onnx")
    convs = [n.name for n in onnx.load(str(net)).graph.node if n.op_type == "Conv"]
    _, _, _, s = _build(net, tmp_path, float_layers=[convs[0]])
    assert [f["layer"] for f in s["float_convs"]] == [convs[0]], s
    assert s["int8_convs"] == len(convs) - 1 and 0 < s["int8_conv_mac_share"] < 1


def test_the_int8_ir_computes_what_the_fp32_model_computes(tmp_path):
    import onnxruntime as ort
    import openvino as ov

    net = tiny_silu_net(tmp_path / "silu.onnx")
    m, xml, _, _ = _build(net, tmp_path)
    x = _samples(m, 1, seed=5)[0]
    ref = ort.InferenceSession(str(net), providers=["CPUExecutionProvider"]).run(None, {m.graph.input[0].name: x})[0]
    got = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    # 8-bit noise through four random layers: close in direction and scale, not to the last digit
    cos = float((got * ref).sum() / (np.linalg.norm(got) * np.linalg.norm(ref)))
    assert cos > 0.99 and abs(float(got.mean()) - float(ref.mean())) < 0.05, (cos, got.mean(), ref.mean())


def test_ignored_scope_names_convolutions_as_openvino_does_and_keeps_the_decode_float(tiny_model):
    from tasks.quantization.nncf_ptq import ignored_scope
    from tasks.quantization.modelopt_ptq import decode_tail_nodes

    m = onnx.load(str(tiny_model))
    s = ignored_scope(m, ["/model.1/"], ["TopK"], [], decode_float=True, sigmoid_float=True)
    assert set(decode_tail_nodes(m)) <= set(s["names"])
    # a biased Conv is a Convolution named "<node>/WithoutBiases" plus an Add keeping the node's name
    assert {"/model.1/conv/Conv", "/model.1/conv/Conv/WithoutBiases"} <= set(s["names"])
    assert s["types"] == ["TopK", "Sigmoid"]
    off = ignored_scope(m, [], [], [], decode_float=False, sigmoid_float=False)
    assert off == {"names": [], "types": []}
    with pytest.raises(ValueError, match="not a valid regex"):
        ignored_scope(m, ["("], [], [], True, True)


def _cfg(tmp_path, tiny_model, tiny_data, **kw):
    from tasks.config import RunConfig

    return RunConfig.model_validate({"model": str(tiny_model), "images": str(tiny_data["images"]),
                                     "annotations": str(tiny_data["annotations"]),
                                     "calib_images": str(tiny_data["calib_images"]), "targets": ["openvino"],
                                     "run_root": str(tmp_path / "runs"), **kw})


def test_a_target_whose_packages_cannot_be_imported_is_refused_before_any_work(monkeypatch, tmp_path, tiny_model,
                                                                               tiny_data):
    import dataclasses

    from tasks.config import ConfigError
    from tasks.targets import table
    from tasks.pipeline import prepare_run

    monkeypatch.setitem(table.TARGETS, "openvino",
                        dataclasses.replace(table.TARGETS["openvino"], requires=("openvino", "no_such_module_xyz")))
    with pytest.raises(ConfigError, match=r"target openvino needs the Python package\(s\) no_such_module_xyz"):
        prepare_run(_cfg(tmp_path, tiny_model, tiny_data))
    assert not (tmp_path / "runs").exists()


def test_a_bad_exclusion_pattern_is_refused_before_any_work(tmp_path, tiny_model, tiny_data):
    from tasks.config import ConfigError
    from tasks.pipeline import prepare_run

    with pytest.raises(ConfigError, match=r"--exclude-nodes pattern '\(' is not a valid regex"):
        prepare_run(_cfg(tmp_path, tiny_model, tiny_data, quant={"exclude_nodes": ["("]}))
    assert not (tmp_path / "runs").exists()


def test_nncf_collects_statistics_and_corrects_biases_in_f32_on_every_cpu(tmp_path, monkeypatch):
    """OpenVINO's CPU plugin computes in bf16 by default on CPUs with AVX512_BF16 or AMX: statistics or
    bias shifts taken that way would make the same build differ by CPU. NNCF 3.4 passes f32 to every
    model it compiles (nncf/openvino/engine.py); this holds it to that, whatever the CPU running it."""
    import openvino as ov

    seen, compile_model = [], ov.Core.compile_model

    def spy(self, *a, **k):
        seen.append(dict(k.get("config") or (a[2] if len(a) > 2 else {}) or {}))
        return compile_model(self, *a, **k)

    def unexpected(*a, **k):
        raise AssertionError("NNCF compiled a model through ov.compile_model, whose precision this test cannot see")

    monkeypatch.setattr(ov.Core, "compile_model", spy)
    monkeypatch.setattr(ov, "compile_model", unexpected)
    net = tiny_silu_net(tmp_path / "silu.onnx")
    from tasks.quantization.nncf_ptq import ignored_scope, nncf_quantize

    m = onnx.load(str(net))
    nncf_quantize(net, _samples(m), 8, tmp_path / "q.xml", ignored_scope(m, [], [], [], True, True), "mixed", "full")
    assert len(seen) >= 2  # statistics, then full bias correction
    for cfg in seen:
        hint = cfg.get("INFERENCE_PRECISION_HINT")
        assert hint == ov.Type.f32 or str(hint).lower() in ("f32", "float32"), cfg


def test_samples_read_one_at_a_time_build_the_same_ir_as_a_list(tmp_path):
    """NNCF reads the samples twice with full bias correction: the re-iterable Samples gives it the
    same data as a list would, from a memory-mapped file, one sample at a time."""
    import hashlib

    from tasks.quantization.nncf_ptq import Samples, ignored_scope, nncf_quantize

    net = tiny_silu_net(tmp_path / "silu.onnx")
    m = onnx.load(str(net))
    arr = np.stack([s[0] for s in _samples(m)])
    np.save(tmp_path / "calib.npy", arr)
    mm = np.load(tmp_path / "calib.npy", mmap_mode="r")
    seen = []
    src = Samples(mm, len(arr), progress=lambda i, n: seen.append(i))
    assert len(src) == 8 and [x.shape for x in src] == [(1, *arr.shape[1:])] * 8
    scope = ignored_scope(m, [], [], [], True, sigmoid_float=True)
    digests = []
    for name, samples in (("list", [a[None] for a in arr]), ("streamed", src)):
        (tmp_path / name).mkdir()
        nncf_quantize(net, samples, 8, tmp_path / name / "q.xml", scope, "mixed", "full")
        digests.append(hashlib.sha256((tmp_path / name / "q.bin").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert seen.count(8) >= 2  # read through more than once, never held whole
