"""A dynamic-shape export through the whole run, on every target (tiny detector, built here): it
quantizes and scores exactly like its static twin, and each INT8 model keeps the export's axes where
it still runs with them, or is shipped at the run's size with the reason in the report."""

import json

import onnx
import pytest

pytestmark = pytest.mark.slow

TARGETS = ["tensorrt", "ort-cpu", "openvino"]


def _dynamic_copy(src, dst, input_dims):
    m = onnx.load(str(src))
    shape = m.graph.input[0].type.tensor_type.shape
    for d, v in zip(shape.dim, input_dims):
        d.Clear()
        if isinstance(v, int):
            d.dim_value = v
        else:
            d.dim_param = v
    if not isinstance(input_dims[0], int):
        out = m.graph.output[0].type.tensor_type.shape.dim[0]
        out.Clear()
        out.dim_param = input_dims[0]
    onnx.save(m, str(dst))
    return dst


def _run(tmp_path, model, tiny_data, run_id):
    from tasks.config import RunConfig
    from tasks.pipeline import run_int8

    cfg = RunConfig.model_validate({
        "model": str(model), "images": str(tiny_data["images"]), "annotations": str(tiny_data["annotations"]),
        "calib_images": str(tiny_data["calib_images"]), "targets": TARGETS, "run_root": str(tmp_path / "runs"),
        "run_id": run_id, "eval": {"warmup": 0, "deployed_runs": 0, "bootstrap_resamples": 0}, "max_map_drop": None})
    return run_int8(cfg)


def _input_dims(path):
    if str(path).endswith(".xml"):
        import openvino as ov

        return [d.get_length() if d.is_static else -1 for d in ov.Core().read_model(str(path)).input(0).get_partial_shape()]
    return [d.dim_value or d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]


def test_a_dynamic_export_quantizes_and_scores_like_its_static_twin_and_keeps_its_axes_where_they_run(
        tmp_path, tiny_model, tiny_data):
    static = _run(tmp_path, tiny_model, tiny_data, "static")
    # height and width dynamic: the tiny detector pools them away, so its INT8 models run at any size
    hw = _run(tmp_path, _dynamic_copy(tiny_model, tmp_path / "tiny-hw.onnx", [1, 3, "height", "width"]),
              tiny_data, "hw")
    # batch dynamic too: its post-processing squeezes batch 1 (as a static export's graph may), so at
    # batch 2 it fails: the models are shipped at the run's size, and the report says why
    nb = _run(tmp_path, _dynamic_copy(tiny_model, tmp_path / "tiny-nb.onnx", ["batch", 3, "height", "width"]),
              tiny_data, "nb")
    for s, kept in ((hw, True), (nb, False)):
        src = s["model"]["source"]
        assert src["run_at"] == [1, 3, 64, 64] and src["size_from"] == "the export's imgsz metadata"
        report = (tmp_path / "runs" / s["run_id"] / "results" / "report.md").read_text()
        assert "dynamic-shape export" in report
        for t in TARGETS:
            q, q0 = s["targets"][t]["quantization"], static["targets"][t]["quantization"]
            d = q["dynamic_axes"]
            assert d["kept"] is kept, (t, d)
            dims = _input_dims(q["artifact"])
            if kept:
                assert dims in ([1, 3, "height", "width"], [1, 3, -1, -1]), (t, dims)
                assert d["checked_at"] == [[1, 3, 64, 64], [1, 3, 32, 32]]
                assert f"- {t}: keeps the export's dynamic axes" in report
            else:
                assert dims == [1, 3, 64, 64] and "does not run at [2, 3, 32, 32]" in d["reason"], (t, dims, d)
                assert f"- {t}: pinned to the run's size: with the export's axes it does not run" in report
            # quantized and scored like the static export: the same figures, the same INT8 share
            assert s["targets"][t]["int8"]["map50_95"] == pytest.approx(static["targets"][t]["int8"]["map50_95"], abs=1e-6)
            assert q.get("quantized_conv_share") == q0.get("quantized_conv_share")
        assert s["fp32"]["map50_95"] == static["fp32"]["map50_95"]
    assert static["model"].get("source") is None
    assert all(static["targets"][t]["quantization"]["dynamic_axes"] is None for t in TARGETS)
    cfg = json.loads((tmp_path / "runs" / "hw" / "quantize-int8" / "config.json").read_text())
    assert cfg["dynamic_axes"]["kept"]
