"""Inference sessions of the runtimes the evaluator can run a model on, chosen from one table by
`EvalSettings.runtime`: ONNX Runtime (with its execution providers) and OpenVINO's CPU plugin. Both
give the same small surface, `run(None, {input: x}) -> [outputs]` and `get_inputs()`, so the same
preprocessing, decoding and pycocotools scoring serve every runtime and every target."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tasks.evaluation.runtime import cpu_info, make_session, runtime_info, select_providers


def _onnxruntime(path: Path, settings: Any, threads: int | None, spin: bool) -> tuple[Any, dict[str, Any]]:
    choice = select_providers(settings.providers, strict=settings.strict_providers)
    sess = make_session(path, choice, threads, spin=spin)
    rt = runtime_info(choice, threads)
    if spin:
        rt["session"] = "deployed: back to back, worker threads spinning (ORT's default)"
    return sess, rt


@dataclass
class _Port:
    name: str
    shape: list[int | str]  # a dynamic dimension as ONNX Runtime names one: a string


class OpenVinoSession:
    """An OpenVINO compiled model behind ONNX Runtime's `run` signature."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self._outputs = list(compiled.outputs)

    def get_inputs(self) -> list[_Port]:
        return [_Port(p.get_any_name(), [d.get_length() if d.is_static else "?" for d in p.get_partial_shape()])
                for p in self.compiled.inputs]

    def run(self, output_names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = self.request.infer(feed)
        return [np.asarray(res[o]) for o in self._outputs]


def openvino_config(threads: int | None, spin: bool = False) -> dict[str, Any]:
    """f32 inference precision: OpenVINO's CPU default is bf16 where the CPU has it, which would make
    its FP32 baseline (and the float layers of an INT8 model) something else. One stream, latency
    hint: one image at a time, as the evaluator runs."""
    cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


def _openvino(path: Path, settings: Any, threads: int | None, spin: bool) -> tuple[Any, dict[str, Any]]:
    import openvino as ov  # heavy: loaded when used, not on --help

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", openvino_config(threads, spin))
    rt = {"provider": "OpenVINO CPU", "providers": {"requested": ["openvino:CPU"], "used": ["openvino:CPU"]},
          "runtime": "openvino", "version": ov.get_version(), "openvino_version": ov.get_version(), "ort_version": None,
          "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")) or threads or os.cpu_count(),
          "device": cpu_info()["model_name"], "cpu": cpu_info(),
          "session": ("deployed: back to back" if spin else "evaluator: one image at a time")
          + ", latency hint, one stream, f32 precision"}
    return OpenVinoSession(compiled), rt


SESSIONS: dict[str, Callable[[Path, Any, int | None, bool], tuple[Any, dict[str, Any]]]] = {
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
}


def open_session(path: Path, settings: Any, threads: int | None, spin: bool = False) -> tuple[Any, dict[str, Any]]:
    """(session, runtime record) for `settings.runtime`: the record says which runtime, its version,
    threads, the CPU and the session style, and goes with every latency measured on it."""
    return SESSIONS[settings.runtime](Path(path), settings, threads, spin)
