"""ONNX Runtime sessions: execution-provider selection, model checks and latency statistics.

Provider selection is explicit and recorded: requested order -> what this ORT build offers ->
what the session actually uses (`get_providers()`). A provider that is requested but missing falls
back with a logged reason, or fails in strict mode.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from tasks.evaluation.shapes import ShapeError, declared_dims, resolve_hw

log = logging.getLogger(__name__)

# Short names users type -> ORT provider names.
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEFAULT_PROVIDERS = ("cuda", "cpu")
_WARNED: set[str] = set()


class ProviderError(RuntimeError):
    """A requested execution provider cannot be used and strict mode forbids falling back."""


class ModelError(ValueError):
    """A model file that cannot be used; the message names the file and the fix."""


@dataclass
class ProviderChoice:
    requested: list[str]
    available: list[str]
    selected: list[str]
    used: list[str] = field(default_factory=list)
    fallback_reasons: list[str] = field(default_factory=list)

    @property
    def primary(self) -> str:
        return (self.used or self.selected)[0]

    def as_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "available": self.available, "selected": self.selected,
                "used": self.used, "primary": self.primary if (self.used or self.selected) else None,
                "fallback_reasons": self.fallback_reasons}


def normalise_provider(name: str) -> str:
    key = name.strip()
    if key.lower() in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[key.lower()]
    if key.endswith("ExecutionProvider"):
        return key
    raise ProviderError(f"unknown execution provider {name!r}; use one of "
                        f"{', '.join(sorted(set(PROVIDER_ALIASES)))} or a full ORT provider name")


@functools.lru_cache(maxsize=None)
def probe_provider(provider: str) -> tuple[bool, str]:
    """Can a session really run on `provider`? onnxruntime-gpu lists CUDA and TensorRT as available
    even on a machine with no GPU, then silently runs on CPU; a one-node session tells the truth."""
    import onnxruntime as ort  # heavy: loaded when used, not on --help

    if provider == "CPUExecutionProvider":
        return True, "always available"
    if provider not in ort.get_available_providers():
        return False, f"this onnxruntime build has no {provider} (install onnxruntime-gpu)"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 4
    # ORT prints the real cause (a missing libcublas, no driver) on fd 2: capture it for the record.
    with tempfile.TemporaryFile() as err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            sess = ort.InferenceSession(model.SerializeToString(), sess_options=so,
                                        providers=[provider, "CPUExecutionProvider"])
            started = provider in sess.get_providers()
            failure = ""
        except Exception as e:
            started, failure = False, f"{type(e).__name__}: {str(e)[:160]}"
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        cause = re.findall(r"with error: ([^\n\x1b]+)", err.read().decode(errors="replace"))
    if started:
        return True, "session started"
    detail = failure or (cause[0].strip() if cause else "no GPU, driver, CUDA or cuDNN")
    return False, f"{provider} is in this onnxruntime build but could not start ({detail})"


def select_providers(requested: Sequence[str] = DEFAULT_PROVIDERS, available: Sequence[str] | None = None,
                     strict: bool = False) -> ProviderChoice:
    """Keep the requested providers this ORT build offers, in order; CPU always ends the list."""
    import onnxruntime as ort  # heavy: loaded when used, not on --help

    names = [normalise_provider(p) for p in requested] or ["CPUExecutionProvider"]
    selected, reasons = [], []
    if available is None:  # the real machine: ask ORT, then probe that each provider truly starts
        avail = list(ort.get_available_providers())
        usable = {n: probe_provider(n) for n in names}
    else:  # injected by tests and callers that already know
        avail = list(available)
        usable = {n: (n in avail, f"this onnxruntime build offers only {', '.join(avail)}") for n in names}
    for n in names:
        ok, why = usable[n]
        if ok:
            if n not in selected:
                selected.append(n)
        else:
            reasons.append(f"{n} requested but unusable: {why}")
    if reasons and strict:
        raise ProviderError("; ".join(reasons) + " (strict mode: install onnxruntime-gpu with a working "
                            "CUDA/TensorRT, or drop the provider: evaluate --providers cpu, int8 --set eval.providers=cpu)")
    if "CPUExecutionProvider" not in selected:
        # CPU last is the safety net for nodes other providers cannot place.
        selected.append("CPUExecutionProvider")
    for r in reasons:
        if r not in _WARNED:  # once per process: the same machine gives the same reason every time
            _WARNED.add(r)
            log.warning("provider fallback: %s", r)
    return ProviderChoice(requested=names, available=avail, selected=selected, fallback_reasons=reasons)


@functools.lru_cache(maxsize=4)
def fp16_quantize_rounding(provider: str = "CPUExecutionProvider") -> dict[str, Any]:
    """Does `provider` round float16 QuantizeLinear to nearest even, as ONNX and TensorRT do? A one-node
    probe on values whose nearest integer is known. ORT 1.24's CPU EP was seen to round toward zero
    (1.6 -> 1, -1.6 -> -1), which biases every quantized activation of an fp16 Q/DQ model by half a
    step, and YOLOv10s then scored 0 mAP: such a model is evaluated with its Q/DQ in float32."""
    import onnxruntime as ort  # heavy: loaded when used, not on --help

    x = np.array([0.3, 0.7, 1.6, 2.4, 3.75, -0.3, -0.7, -1.6, -2.4, -3.75], dtype=np.float16)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "fp16_q_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [len(x)])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [len(x)])],
        [onnx.numpy_helper.from_array(np.array(1.0, np.float16), "s"),
         onnx.numpy_helper.from_array(np.array(0, np.int8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=[provider])
    got = sess.run(None, {"x": x})[0]
    want = np.rint(x.astype(np.float32)).astype(np.int8)
    wrong = int((got != want).sum())
    return {"provider": provider, "exact": wrong == 0, "wrong": wrong, "of": len(x),
            "example": f"{float(x[2])} -> {int(got[2])} (nearest: {int(want[2])})"}


def check_model_file(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file, turning every failure into an error that names the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist; pass --model with the path of an ONNX export")
    if path.is_dir() or path.stat().st_size == 0:
        raise ModelError(f"model {path} is {'a folder' if path.is_dir() else 'empty'}; re-export the ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=True)
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError, ValidationError, google.protobuf errors...
        raise ModelError(f"model {path} is not a valid ONNX model ({type(e).__name__}: {str(e)[:200]}); "
                         f"re-export it or check that the download/copy is complete") from e
    if not model.graph.node:
        raise ModelError(f"model {path} has an empty graph; re-export it")
    return model


def model_io(model: onnx.ModelProto, imgsz: Sequence[int] | None = None
             ) -> tuple[str, tuple[int, int, int, int], list[tuple[str, tuple]]]:
    """(input name, NCHW input shape the run uses, [(output name, shape)]) with clear errors. A
    dynamic-shape export runs at batch 1 and `imgsz` (else its Ultralytics `imgsz` metadata)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                         f"a YOLO export has one image input")
    inp = inputs[0]
    dims = declared_dims(inp)
    if len(dims) != 4:
        raise ModelError(f"input {inp.name!r} has rank {len(dims)}; expected NCHW (1x3xHxW)")
    if dims[1] != 3 or any(isinstance(d, int) and d <= 0 for d in dims):
        raise ModelError(f"input {inp.name!r} has shape {dims}; the run needs a 1x3xHxW image input "
                         f"(3 channels; height and width static or dynamic)")
    try:
        (h, w), _ = resolve_hw(model, dims, imgsz)
    except ShapeError as e:
        raise ModelError(str(e)) from None
    elem = inp.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:  # the evaluator and the calibration feed float32 pixels
        kind = onnx.TensorProto.DataType.Name(elem).lower() if elem else "not a tensor of known type"
        raise ModelError(f"input {inp.name!r} is {kind}; the run feeds float32 images: re-export with a float32 "
                         f"input (without half=True)")
    shape = (1, 3, h, w)
    if not model.graph.output:
        raise ModelError("model has no outputs; a YOLO export has one detection output: re-export it")
    return inp.name, shape, [(o.name, tuple(declared_dims(o))) for o in model.graph.output]


def model_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def make_session(model_path: Path, choice: ProviderChoice, threads: int | None = None, spin: bool = False):
    """Create a session with the selected providers; if one fails to start, drop it and retry.

    `spin=True` keeps ORT's default of worker threads spinning between parallel sections (what a
    deployed session does); the evaluator turns it off."""
    import onnxruntime as ort  # heavy: loaded when used, not on --help

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    # ORT's worker threads spin after each run by default; between runs they would compete with our
    # own preprocessing and decoding on the same cores. Without spinning each parallel section pays a
    # wake-up, which costs INT8 graphs (more, smaller kernels) more than FP32: bench/targets.py
    # reports latency both ways.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    providers = list(choice.selected)
    while True:
        try:
            sess = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
        except Exception as e:
            if len(providers) == 1:
                raise
            bad = providers.pop(0)
            msg = f"{bad} failed to start ({type(e).__name__}: {str(e)[:160]}); falling back to {providers[0]}"
            log.warning(msg)
            choice.fallback_reasons.append(msg)
            continue
        used = sess.get_providers()
        for p in providers:
            if p not in used:  # ORT drops a provider silently when its libraries do not load
                msg = f"{p} was selected but the session did not register it (missing CUDA/cuDNN libraries?)"
                log.warning(msg)
                choice.fallback_reasons.append(msg)
        choice.used = list(used)
        return sess


def latency_stats(samples_s: Sequence[float]) -> dict[str, float]:
    if not samples_s:
        return {"p50": float("nan"), "p90": float("nan"), "mean": float("nan"), "min": float("nan"), "n": 0}
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {"p50": round(float(np.percentile(a, 50)), 3), "p90": round(float(np.percentile(a, 90)), 3),
            "mean": round(float(a.mean()), 3), "min": round(float(a.min()), 3), "n": int(a.size)}


def device_name(provider: str) -> str:
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        try:
            import pynvml  # shipped by nvidia-ml-py, a ModelOpt dependency

            pynvml.nvmlInit()
            return str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0)))
        except Exception as e:  # no driver: say so rather than guess
            return f"unknown GPU ({type(e).__name__})"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU features that change INT8 and FP32 speed (and so every latency ratio): recorded with each figure.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU a latency was measured on, in a form a script can compare: model name, vendor, family and
    model numbers, the flags among CPU_FLAGS it has, logical cores, architecture."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if ":" in line:
            k, v = (x.strip() for x in line.split(":", 1))
            fields.setdefault(k, v)
        elif not line.strip() and fields:
            break  # the first processor is enough
    flags = set(fields.get("flags", "").split())
    family, model = fields.get("cpu family"), fields.get("model")
    return {"model_name": fields.get("model name") or platform.processor() or platform.machine(),
            "vendor": fields.get("vendor_id"), "family": int(family) if family and family.isdigit() else None,
            "model": int(model) if model and model.isdigit() else None,
            "flags": [f for f in CPU_FLAGS if f in flags], "cores": os.cpu_count(), "arch": platform.machine()}


def cpu_label(info: dict[str, Any] | None = None) -> str:
    """One line: 'Intel(R) Xeon(R) Processor, family 6 model 207, 2 cores, avx2 avx512_vnni amx_int8'."""
    c = info or cpu_info()
    fm = f", family {c['family']} model {c['model']}" if c.get("family") is not None else ""
    return f"{c['model_name']}{fm}, {c['cores']} cores, {' '.join(c['flags']) or 'no listed flags'}"


def runtime_info(choice: ProviderChoice, threads: int | None) -> dict[str, Any]:
    import onnxruntime as ort  # heavy: loaded when used, not on --help

    return {"provider": choice.primary, "providers": choice.as_dict(), "runtime": "onnxruntime",
            "version": ort.__version__, "ort_version": ort.__version__, "threads": threads or os.cpu_count(), "device": device_name(choice.primary),
            "cpu": cpu_info(), "session": "evaluator: one image at a time, worker threads not spinning"}
