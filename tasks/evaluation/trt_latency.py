"""TensorRT latency of the `tensorrt` target: an engine built from the Q/DQ model (explicit INT8)
against an FP16 engine of the FP32 model, both through ONNX Runtime's TensorRT EP. Where the EP
cannot start (no GPU, no TensorRT libraries), the result says so instead of a number."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tasks.evaluation.runtime import latency_stats, probe_provider

TRT = "TensorrtExecutionProvider"


def _p50(run: Callable[[], Any], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        run()
    t = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run()
        t.append(time.perf_counter() - t0)
    return latency_stats(t)["p50"]


def tensorrt_timing(fp32_path: Path, qdq_path: Path, x: np.ndarray, input_name: str, warmup: int = 20,
                    iters: int = 100, probe: Callable[[str], tuple[bool, str]] = probe_provider) -> dict[str, Any]:
    """{"ran": True, "fp16_p50_ms", "int8_p50_ms", "speedup"} or {"ran": False, "reason"}."""
    ok, why = probe(TRT)
    if not ok:
        return {"ran": False, "reason": why}
    import onnxruntime as ort  # heavy: loaded when used, not on --help

    out: dict[str, Any] = {"ran": True}
    with tempfile.TemporaryDirectory() as cache:
        common = {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache, "trt_fp16_enable": True}
        for name, path, opts in (("fp16", fp32_path, common),
                                 # Q/DQ nodes make TensorRT build INT8 layers where they sit (explicit
                                 # quantization); fp16 lets the rest run in half precision, as deployed
                                 ("int8", qdq_path, {**common, "trt_int8_enable": True})):
            so = ort.SessionOptions()
            so.log_severity_level = 3
            try:
                sess = ort.InferenceSession(str(path), so, providers=[(TRT, opts), "CPUExecutionProvider"])
            except Exception as e:  # an engine that fails to build is a finding, not a crash
                return {"ran": False, "reason": f"TensorRT could not build the {name} engine: {str(e)[:200]}"}
            if TRT not in sess.get_providers():
                return {"ran": False, "reason": f"the {name} session did not register {TRT}"}
            out[f"{name}_p50_ms"] = _p50(lambda: sess.run(None, {input_name: x}), warmup, iters)
    out["speedup"] = round(out["fp16_p50_ms"] / out["int8_p50_ms"], 3) if out["int8_p50_ms"] else None
    return out
