"""Activation ranges for the ort-cpu target (asymmetric uint8) from one streamed pass.

ONNX Runtime's `minmax` keeps the smallest minimum and largest maximum over all calibration
samples: like ModelOpt's max, every added sample can only widen a range. `mean-max` here is
NNCF's default statistic taken per side: the mean over samples of each sample's minimum, and of
each sample's maximum, which converges as samples are added. Every float activation of the model
is read (ORT calibrates node inputs and outputs, all of which are node outputs or graph inputs),
so the ranges cover whatever ORT's quantizer chooses to quantize; they reach it as
`TensorQuantOverrides` rmin/rmax, from which ORT computes the scale and zero point as it would
from its own calibration. Memory is flat in the count: five numbers per tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tasks.quantization.probe import tensor_session

# the methods computed here; ORT's own (minmax, percentile, entropy) stay with its calibrators
METHODS = ("mean-max",)


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Every tensor a node writes, and the graph's inputs that are not initializers."""
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    names += [o for n in model.graph.node for o in n.output if o]
    return list(dict.fromkeys(names))


def collect_extremes(model_path: Path, reader: Any, threads: int | None = None) -> tuple[dict[str, dict[str, float]], int]:
    """Per float activation: the observed min and max over all samples, and the sums over samples of
    each sample's min and max (with the sample count)."""
    model = onnx.load(str(model_path))
    sess = tensor_session(model, activation_tensors(model), threads)
    outputs = [o.name for o in sess.get_outputs()]
    stats: dict[str, dict[str, float]] = {}
    reader.rewind()
    n = 0
    while (feed := reader.get_next()) is not None:
        for t, x in zip(outputs, sess.run(outputs, feed)):
            if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.size):
                continue  # shapes, indices: ORT does not quantize them either
            lo, hi = float(x.min()), float(x.max())
            st = stats.setdefault(t, {"min": np.inf, "max": -np.inf, "min_sum": 0.0, "max_sum": 0.0, "samples": 0})
            st["min"], st["max"] = min(st["min"], lo), max(st["max"], hi)
            st["min_sum"] += lo
            st["max_sum"] += hi
            st["samples"] += 1
        n += 1
    return stats, n


def mean_minmax(st: dict[str, float]) -> tuple[float, float]:
    """The mean over samples of each sample's min, and of its max."""
    k = st["samples"]
    return (st["min_sum"] / k, st["max_sum"] / k) if k else (0.0, 0.0)


def range_overrides(stats: dict[str, dict[str, float]], method: str) -> dict[str, list[dict[str, Any]]]:
    """ORT `TensorQuantOverrides` giving each activation the range `method` estimates."""
    if method not in METHODS:
        raise ValueError(f"unknown ort-cpu range estimator {method!r}; use one of {', '.join(METHODS)}")
    out = {}
    for t, st in stats.items():
        lo, hi = mean_minmax(st)
        out[t] = [{"rmin": np.array(lo, dtype=np.float32), "rmax": np.array(hi, dtype=np.float32)}]
    return out
