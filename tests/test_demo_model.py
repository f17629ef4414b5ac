"""The committed demo model: its contract, and its accuracy against the reference in its model card."""
import json

import pytest

from conftest import ROOT
from tasks.config import load_demo_config
from tasks.evaluation.evaluate import EvalSettings, evaluate_model, resolve_format
from tasks.evaluation.runtime import check_model_file, model_io
from tasks.evaluation.sources.base import DataSpec

MODEL = ROOT / "demo" / "model" / "yolov10n-shapes.onnx"


def test_contract_matches_the_users_yolov10m_export():
    m = check_model_file(MODEL)
    name, shape, outs = model_io(m)
    assert name == "images" and shape == (1, 3, 320, 320)
    assert outs == [("output0", (1, 300, 6))]
    fmt, nc, _ = resolve_format(m, EvalSettings())
    assert fmt == "yolov10" and nc == 6
    ops = {n.op_type for n in m.graph.node}
    assert {"Conv", "TopK", "GatherElements"} <= ops or {"Conv", "TopK"} <= ops
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert MODEL.stat().st_size < 12 * 2**20


@pytest.mark.slow
def test_fp32_map_matches_the_model_card():
    ref = json.loads((ROOT / "demo" / "model" / "reference.json").read_text())
    demo = load_demo_config()
    m = evaluate_model(MODEL, DataSpec(demo["paths"]["images"], demo["paths"]["annotations"]),
                       settings=EvalSettings(providers=["cpu"], warmup=1))
    assert m["images"] == ref["images"] == 100
    assert m["map50_95"] >= 0.60
    assert m["map50_95"] == pytest.approx(ref["map50_95"], abs=ref["tolerance"])
