import numpy as np
import pytest

from tasks.evaluation.runtime import (ModelError, ProviderError, check_model_file, latency_stats, make_session, model_io,
                           select_providers)

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_requested_order_kept_and_cpu_last():
    c = select_providers(["cuda", "cpu"], available=ALL)
    assert c.selected == ["CUDAExecutionProvider", "CPUExecutionProvider"] and not c.fallback_reasons
    c = select_providers(["tensorrt", "cuda"], available=ALL)
    assert c.selected == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_unavailable_provider_falls_back_with_reason():
    c = select_providers(["cuda", "cpu"], available=["CPUExecutionProvider"])
    assert c.selected == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider" in c.fallback_reasons[0]


def test_strict_mode_fails_clearly():
    with pytest.raises(ProviderError, match="strict"):
        select_providers(["cuda"], available=["CPUExecutionProvider"], strict=True)


def test_unknown_provider_name():
    with pytest.raises(ProviderError, match="unknown execution provider 'gpu0'"):
        select_providers(["gpu0"], available=ALL)


def test_real_machine_records_provider_actually_used(tiny_model):
    # On a machine without a GPU the probe must notice that CUDA cannot start, whatever ORT lists.
    c = select_providers(["cuda", "cpu"])
    sess = make_session(tiny_model, c)
    assert c.used == sess.get_providers()
    assert c.primary in c.used
    if "CUDAExecutionProvider" not in c.used:
        assert c.fallback_reasons


def test_session_spinning_is_off_for_the_evaluator_and_on_when_asked(tiny_model):
    c = select_providers(["cpu"])
    key = "session.intra_op.allow_spinning"
    assert make_session(tiny_model, c).get_session_options().get_session_config_entry(key) == "0"
    assert make_session(tiny_model, c, spin=True).get_session_options().get_session_config_entry(key) == "1"


def test_missing_empty_corrupt_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        check_model_file(tmp_path / "missing.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        check_model_file(empty)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelError, match="not a valid ONNX"):
        check_model_file(junk)


def test_truncated_model(tmp_path, tiny_model):
    t = tmp_path / "trunc.onnx"
    t.write_bytes(tiny_model.read_bytes()[:300])
    with pytest.raises(ModelError, match="trunc.onnx"):
        check_model_file(t)


def _identity(dims, meta=None):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in (meta or {}).items():
        m.metadata_props.add(key=k, value=v)
    return m


def test_a_dynamic_input_runs_at_its_metadata_size_or_imgsz_and_is_refused_without_either():
    dyn = ["n", 3, "h", "w"]
    assert model_io(_identity(dyn, {"imgsz": "[480, 640]"}))[1] == (1, 3, 480, 640)
    assert model_io(_identity(dyn, {"imgsz": "320"}))[1] == (1, 3, 320, 320)
    assert model_io(_identity(dyn, {"imgsz": "[480, 640]"}), [256])[1] == (1, 3, 256, 256)  # --imgsz wins
    assert model_io(_identity(dyn), [384, 512])[1] == (1, 3, 384, 512)
    assert model_io(_identity(["batch", 3, 64, 64]))[1] == (1, 3, 64, 64)  # dynamic batch only: its own size
    with pytest.raises(ModelError, match=r"dynamic height/width .* no imgsz; pass --imgsz H W"):
        model_io(_identity(dyn))
    with pytest.raises(ModelError, match=r"not a positive multiple of the model's stride 32; pass --imgsz"):
        model_io(_identity(dyn), [300])
    with pytest.raises(ModelError, match=r"--imgsz 320 320 but input 'x' is static 64x64; drop --imgsz"):
        model_io(_identity([1, 3, 64, 64]), [320])
    with pytest.raises(ModelError, match=r"3 channels"):
        model_io(_identity(["n", "c", "h", "w"]), [64])


def test_a_model_with_two_inputs_is_refused():
    from onnx import TensorProto, helper

    g2 = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                           [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1]),
                            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ModelError, match="2 inputs"):
        model_io(helper.make_model(g2))


def test_latency_stats():
    s = latency_stats([0.010, 0.020, 0.030, 0.040])
    assert s["p50"] == pytest.approx(25.0) and s["min"] == pytest.approx(10.0) and s["n"] == 4
    assert np.isnan(latency_stats([])["p50"])


def test_tensorrt_timing_says_why_it_was_skipped(tmp_path):
    import numpy as np

    from tasks.evaluation.trt_latency import tensorrt_timing

    r = tensorrt_timing(tmp_path / "a.onnx", tmp_path / "b.onnx", np.zeros((1, 3, 8, 8), np.float32), "images",
                        probe=lambda p: (False, f"{p} is not in this onnxruntime build"))
    assert r == {"ran": False, "reason": "TensorrtExecutionProvider is not in this onnxruntime build"}
    from tasks.evaluation.runtime import probe_provider

    if not probe_provider("TensorrtExecutionProvider")[0]:  # no GPU here or in CI: the probe's reason is passed on
        real = tensorrt_timing(tmp_path / "a.onnx", tmp_path / "b.onnx", np.zeros((1, 3, 8, 8), np.float32), "images")
        assert real == {"ran": False, "reason": probe_provider("TensorrtExecutionProvider")[1]}


def test_cpu_info_names_the_cpu_and_the_flags_that_change_int8_speed():
    from tasks.evaluation.runtime import cpu_info, cpu_label

    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
            "model name\t: AMD EPYC 9B45\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n\n"
            "processor\t: 1\nmodel name\t: something else\n")
    c = cpu_info(text)
    assert c["model_name"] == "AMD EPYC 9B45" and (c["family"], c["model"]) == (26, 2)
    assert c["flags"] == ["avx2", "avx512f", "avx512_vnni"] and c["vendor"] == "AuthenticAMD"
    assert "family 26 model 2" in cpu_label(c) and "avx512_vnni" in cpu_label(c)
    assert cpu_info("")["flags"] == []  # not x86 Linux: nothing guessed
