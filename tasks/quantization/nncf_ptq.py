"""The openvino target: an INT8 model for OpenVINO's CPU plugin, made by NNCF on the OpenVINO model.

Why NNCF and not the project's own Q/DQ (bench/ov_portability.py: 79 COCO images, OpenVINO's oneDNN
kernels capped with ONEDNN_MAX_CPU_ISA to each family this project's CPUs have): OpenVINO runs
ModelOpt's signed activations (int8, zero point 0) correctly only on AMX kernels; on AVX512-VNNI,
AVX2-VNNI and AVX2 kernels its convolutions report u8 inputs and the model collapses (YOLOv10s mAP
0.0066, YOLOv5n 0.029; issue #15 saw 0.008 on a Zen 5). The equivalent uint8 zero points (+128)
fix the VNNI kernels but not plain AVX2, where u8 x s8 pairs saturate 16-bit sums when every
activation sits near code 128 (0.06 and 0.05). NNCF's model (asymmetric uint8 activations,
symmetric int8 weights, 7-bit weights where its overflow fix says) holds on all four.

It is Ultralytics' `format=openvino, int8=True` recipe; the project adds its calibration samples, its
exclusions, the decode kept in float by graph structure (not by PyTorch module names, which an ONNX
export does not carry), full bias correction, the overflow fix on every layer, and its accuracy
guard (layers put back in float).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import onnx

from tasks.evaluation.runtime import cpu_info
from tasks.evaluation.shapes import judge_restored
from tasks.evaluation.sessions import openvino_config
from tasks.quantization.layers import layer_macs
from tasks.quantization.modelopt_ptq import PeakRSS, decode_tail_nodes, expand_exclusions

log = logging.getLogger(__name__)

# Part of the openvino step's cache key: raised whenever the same inputs start giving another model.
BUILD_VERSION = 1

# OpenVINO names a convolution with a bias `<onnx node>/WithoutBiases` (the bias is an Add that keeps
# the ONNX name): NNCF sees the former.
_CONV_SUFFIX = "/WithoutBiases"


def ignored_scope(model: onnx.ModelProto, exclude_nodes: Sequence[str], exclude_op_types: Sequence[str],
                  float_layers: Sequence[str], decode_float: bool, sigmoid_float: bool,
                  model_name: str = "the model") -> dict[str, list[str]]:
    """Node names and op types NNCF leaves in float, named as OpenVINO names them.

    - the decode after the head's final convolutions (anchors, strides, DFL, TopK): integer
      arithmetic there coarsens boxes and scores for no speed;
    - Sigmoid (Ultralytics' recipe): SiLU's sigmoid and its multiply stay float, convolutions
      still get INT8 inputs;
    - the user's exclusions, and the layers the accuracy guard or recovery keeps in float."""
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    names = list(decode_tail_nodes(model)) if decode_float else []
    names += expand_exclusions(model, exclude_nodes, model_name)
    names += list(float_layers)
    out = []
    for n in dict.fromkeys(names):
        out.append(n)
        if n in convs:
            out.append(n + _CONV_SUFFIX)
    ov_types = {"Sigmoid": "Sigmoid", "Conv": "Convolution", "MatMul": "MatMul", "Add": "Add", "Mul": "Multiply",
                "Concat": "Concat", "TopK": "TopK", "MaxPool": "MaxPool", "Resize": "Interpolate"}
    types = [ov_types.get(t, t) for t in exclude_op_types]
    if sigmoid_float and "Sigmoid" not in types:
        types.append("Sigmoid")
    return {"names": out, "types": types}


class Samples:
    """Calibration samples NNCF can read more than once (statistics, then full bias correction), one
    at a time from a sliceable array (a memory-mapped .npy): a list of them held 512 samples of
    640x640 at once (5.2 GB peak for YOLOv5n) where this stays flat in the count."""

    def __init__(self, arr: Any, count: int, progress: Any = None) -> None:
        self.arr, self.count, self.progress = arr, count, progress

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.count):
            if self.progress is not None:
                self.progress(i + 1, self.count)
            yield np.asarray(self.arr[i:i + 1], dtype=np.float32)


def nncf_quantize(model_path: Path, samples: Iterable[np.ndarray], count: int, out_xml: Path,
                  scope: dict[str, list[str]], preset: str, bias_correction: str | None,
                  overflow_fix: str = "enable") -> dict[str, Any]:
    """NNCF post-training quantization of the OpenVINO model read from the ONNX export; the IR is
    written with FP32 weights kept (OpenVINO's save_model would compress them to FP16 by default).
    `bias_correction`: "full" (NNCF's BiasCorrection), "fast" or None. `overflow_fix`: which layers
    get 7-bit weights (enable: all; first_layer_only; disable), so that CPUs without VNNI, whose u8 x s8
    multiply-add sums pairs in 16 bits, cannot saturate: the same IR then computes the same on every
    x86 kernel family."""
    import nncf  # heavy: loaded when used, not on --help
    import openvino as ov  # heavy: loaded when used, not on --help
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix  # heavy: loaded when used, not on --help

    t0 = time.perf_counter()
    with PeakRSS() as rss:
        ov_model = ov.convert_model(str(model_path))
        q = nncf.quantize(
            # a one-shot iterable is held as a list: NNCF may read the samples twice
            ov_model, nncf.Dataset(samples if isinstance(samples, Samples) else list(samples)),
            preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
            ignored_scope=nncf.IgnoredScope(names=scope["names"], types=scope["types"], validate=False),
            subset_size=count, fast_bias_correction=bias_correction != "full",
            advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=bias_correction is None,
                                                               overflow_fix=OverflowFix(overflow_fix)))
        ov.save_model(q, str(out_xml), compress_to_fp16=False)
    return {"tool": f"nncf {nncf.__version__} quantize on the OpenVINO model (openvino {ov.get_version()})",
            "wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(rss.peak / 2**20, 1),
            "rss_growth_mib": round((rss.peak - rss.start) / 2**20, 1)}


def build_openvino(model_path: Path, samples: Iterable[np.ndarray], count: int, out_xml: Path, settings: Any,
                   exclude_nodes: Sequence[str], exclude_op_types: Sequence[str], float_layers: Sequence[str],
                   bias_correction: str | None = None) -> dict[str, Any]:
    """The openvino target's model from `settings` (OpenVinoSettings): its ignored scope, then NNCF;
    the flow's step and bench/targets.py both build it here. `bias_correction`: None (the plain run)
    or NNCF's "fast" one (a candidate of auto mode's search: it helps some models and hurts others)."""
    fp32 = onnx.load(str(model_path))
    scope = ignored_scope(fp32, exclude_nodes, exclude_op_types, float_layers, settings.decode_float,
                          settings.sigmoid_float, Path(model_path).name)
    rec = nncf_quantize(model_path, samples, count, out_xml, scope, settings.preset, bias_correction,
                        settings.overflow_fix)
    return {**rec, "ignored_scope": scope, "bias_correction": bias_correction}


def runtime_convolutions(model_file: Path, threads: int | None = None) -> dict[str, Any]:
    """How OpenVINO's CPU plugin runs each convolution on this CPU, read from the compiled model's
    runtime graph: its precision (i8/u8 = an integer kernel) and oneDNN primitive."""
    import openvino as ov  # heavy: loaded when used, not on --help

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(model_file)), "CPU", openvino_config(threads))
    int8, flt, prims = [], [], {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "layerType" not in rt or rt["layerType"].astype(str) != "Convolution":
            continue
        prec, prim = rt["runtimePrecision"].astype(str), rt["primitiveType"].astype(str)
        names = rt["originalLayersNames"].astype(str).split(",") if "originalLayersNames" in rt else [op.get_friendly_name()]
        # an integer kernel: 8-bit input precision and an integer primitive (a "_f32" primitive
        # with i8 precision dequantizes its weights and computes in float)
        integer = prec in ("i8", "u8") and not prim.lower().endswith("f32")
        (int8 if integer else flt).append(names)
        prims[f"{prec} {prim}"] = prims.get(f"{prec} {prim}", 0) + 1
    return {"int8": int8, "float": flt, "primitives": prims, "cpu": cpu_info()["model_name"],
            "openvino_version": ov.get_version()}


def conv_summary(fp32: onnx.ModelProto, model_file: Path, threads: int | None = None) -> dict[str, Any]:
    """INT8 convolutions as OpenVINO runs them, and their share of the FP32 model's convolution MACs
    (each runtime convolution matched to its ONNX Conv by the names OpenVINO keeps)."""
    rc = runtime_convolutions(model_file, threads)
    macs = layer_macs(fp32)
    convs = [n.name for n in fp32.graph.node if n.op_type == "Conv"]

    def onnx_name(names: list[str]) -> str | None:
        for n in names:
            base = n.removesuffix(_CONV_SUFFIX)
            if base in macs:
                return base
        return None

    total = sum(macs.get(c, 0) for c in convs) or 1
    int8_names = [onnx_name(n) for n in rc["int8"]]
    floats = [{"layer": (b := onnx_name(n)) or n[0], "mac_share": round(macs.get(b, 0) / total, 6) if b else 0.0}
              for n in rc["float"]]
    floats.sort(key=lambda r: -r["mac_share"])
    int8_macs = sum(macs.get(n, 0) for n in int8_names if n)
    return {"int8_convs": len(rc["int8"]), "convs": len(rc["int8"]) + len(rc["float"]),
            "float_convs": floats, "int8_conv_mac_share": round(int8_macs / total, 4),
            "conv_quantized_share": round(len(rc["int8"]) / max(1, len(rc["int8"]) + len(rc["float"])), 4),
            "runtime_primitives": rc["primitives"], "read_on_cpu": rc["cpu"],
            "read_with": f"openvino {rc['openvino_version']}: compiled model's runtime graph"}


def keep_dynamic_axes(xml: Path, axes: dict[str, list[Any]], input_name: str, sample: np.ndarray,
                      stride: int = 32, threads: int | None = None) -> dict[str, Any]:
    """A dynamic-shape export's axes back on the IR (OpenVINO's reshape to a partial shape), where it
    still runs with them and gives the static IR's outputs (tasks/evaluation/shapes.py judges it);
    the IR at `xml` is replaced then, else left pinned. Returns the record."""
    import openvino as ov  # heavy: loaded when used, not on --help

    core = ov.Core()
    cfg = openvino_config(threads)
    pinned = core.compile_model(core.read_model(str(xml)), "CPU", cfg)
    dynamic = core.read_model(str(xml))
    try:
        dynamic.reshape(ov.PartialShape([d if isinstance(d, int) and d > 0 else -1 for d in axes[input_name]]))
        compiled = core.compile_model(dynamic, "CPU", cfg)
    except Exception as e:  # OpenVINO raises its own kinds when a reshape cannot propagate or a plugin refuses
        return {"kept": False, "reason": f"OpenVINO cannot reshape and compile the IR with the export's axes: "
                                         f"{str(e)[:200]}"}

    def runner(c: Any) -> Any:
        return lambda x: [np.asarray(v) for v in c(x).values()]

    rec = judge_restored(runner(pinned), runner(compiled), axes, input_name, sample, stride)
    if rec["kept"]:  # written beside it, then renamed over it (the caller's folder is a temporary one)
        tmp = xml.with_name(xml.stem + ".dynamic.xml")
        ov.save_model(dynamic, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    return rec
