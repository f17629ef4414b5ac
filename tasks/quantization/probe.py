"""An ONNX Runtime session that returns a model's intermediate tensors, for the calibration passes
that take their own statistics (tasks/quantization/entropy.py, ort_ranges.py, layers.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import onnx


def tensor_session(model: onnx.ModelProto, names: list[str], threads: int | None = None) -> Any:
    """A CPU session whose outputs include `names` (the model is edited: pass a copy you own)."""
    import onnxruntime as ort  # heavy: loaded when a calibration pass runs, not on --help

    have = {o.name for o in model.graph.output}
    for t in names:
        if t not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as td:  # the extended graph, written so big models load too
        path = Path(td) / "extended.onnx"
        onnx.save(model, str(path))
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
