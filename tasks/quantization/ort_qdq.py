"""The ort-cpu target: an INT8 model that ONNX Runtime's CPU EP runs with integer kernels.

ModelOpt places Q/DQ for TensorRT: only convolution *inputs* are quantized, so on the ORT CPU EP
almost no convolution fuses into QLinearConv and the model runs slower than FP32. ORT fuses
DQ -> op -> Q groups, which needs a scale on every op output along the way (Conv, Sigmoid, Mul,
Add, Concat ...). ModelOpt calibrates only the tensors it quantizes, and symmetrically (int8, zero
point 0); this target calibrates every activation min/max asymmetrically for uint8 (post-SiLU
tensors are nearly non-negative: a symmetric range wastes half the codes), in one streamed pass.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import version_converter

from tasks.config import OrtCpuSettings
from tasks.quantization import ort_ranges
from tasks.quantization.modelopt_ptq import (PeakRSS, stderr_to, checked_qdq, decode_tail_nodes, expand_exclusions, shape_nodes,
                            ort_cpu_kernels, quantizer_workspace)
from tasks.run.rundir import sha256_file

log = logging.getLogger(__name__)


def cpu_has_vnni(cpuinfo: str | None = None) -> bool | None:
    """True/False on x86 Linux (from /proc/cpuinfo flags); None where it cannot be told."""
    if cpuinfo is None:
        if platform.machine().lower() not in ("x86_64", "amd64") or not os.path.exists("/proc/cpuinfo"):
            return None
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def resolve_reduce_range(setting: str, vnni: bool | None) -> tuple[bool, str]:
    if setting != "auto":
        return setting == "on", f"reduce_range {setting} (set)"
    if vnni is False:
        return True, "reduce_range on: x86 CPU without VNNI, whose u8 x s8 multiply-add saturates on 8-bit weights"
    return False, "reduce_range off: " + ("CPU has VNNI" if vnni else "not an x86 CPU, or its flags are unknown")


MIN_OPSET = 13

# Part of the ort-cpu step's cache key: raised whenever the same inputs start giving another model,
# so entries built by the older code are not reused. 2: ORT's op registries restored after ModelOpt
# (before, an ort-cpu model built after a fresh ModelOpt run in the same process quantized fewer ops).
# 3: a dynamic-shape export's shape arithmetic kept in float (quantize.shape_nodes).
# 4: SiLU pre-activation floors (an option, since removed: not confirmed on 300 images).
# 5: the head preset, stem-float and merge-every options removed (defaults unchanged).
BUILD_VERSION = 5

# Samples whose min/max ORT keeps before merging them: bounds calibration memory (ORT's own default
# keeps every sample's activations until the end).
CALIB_MERGE_EVERY = 8


def with_min_opset(model_path: Path, work: Path, min_opset: int = MIN_OPSET) -> tuple[Path, int]:
    """The model at opset >= 13 (a converted copy in `work` if needed), and its original opset.

    Per-channel Q/DQ needs opset 13 (DequantizeLinear's axis); ORT's quantizer writes it on older
    models anyway, which ORT then refuses to load (YOLOv5 exports default to opset 12)."""
    model = onnx.load(str(model_path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= min_opset:
        return Path(model_path), opset
    out = Path(work) / f"opset{min_opset}.onnx"
    onnx.save(version_converter.convert_version(model, min_opset), str(out))
    return out, opset


class FirstSampleReader:
    """The first sample of a reader, alone: what ORT's calibrator is given when every tensor it could
    calibrate already has its range from ort_ranges (its own ranges are then never read)."""

    def __init__(self, reader: Any) -> None:
        reader.rewind()
        self.first = reader.get_next()
        self._given = False

    def __len__(self) -> int:
        return 1

    def get_next(self) -> dict | None:
        if self._given:
            return None
        self._given = True
        return self.first

    def get_first(self) -> dict | None:
        return self.first

    def rewind(self) -> None:
        self._given = False


def uncovered_activations(model: onnx.ModelProto, covered: set[str]) -> list[str]:
    """Activations the Q/DQ model quantizes whose range did not come from `covered`."""
    inits = {i.name for i in model.graph.initializer}
    return sorted({n.input[0] for n in model.graph.node
                   if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[0] not in covered})


class MinMaxSafeReader:
    """Wraps a reader so ORT's min/max calibrator, merging every `k` samples, never ends on an empty
    batch: ORT 1.24 raises "No data is collected" when the sample count is a multiple of k. The
    last sample is then given twice, which leaves every min and max unchanged."""

    def __init__(self, reader: Any, k: int) -> None:
        self.reader, self.repeat = reader, len(reader) % k == 0
        reader.rewind()  # ORT reads to the end without rewinding first
        self._last: dict | None = None
        self._done = False

    def __len__(self) -> int:
        return len(self.reader)

    def get_next(self) -> dict | None:
        nxt = self.reader.get_next()
        if nxt is not None:
            self._last = nxt
            return nxt
        if self.repeat and not self._done and self._last is not None:
            self._done = True
            return self._last
        return None

    def get_first(self) -> dict | None:
        return self.reader.get_first()

    def rewind(self) -> None:
        self.reader.rewind()
        self._done = False


def symmetric_overrides(amax: dict[str, float]) -> dict[str, list[dict[str, Any]]]:
    """ORT `TensorQuantOverrides` that give uint8 tensors symmetric ranges [-amax, amax] (zero point
    128): how ModelOpt's max scales (int8, symmetric) map onto this target, for comparison."""
    return {t: [{"scale": np.array(2 * a / 255, dtype=np.float32), "zero_point": np.array(128, dtype=np.uint8)}]
            for t, a in amax.items() if a > 0}


def build_ort_cpu(model_path: Path, reader: Any, settings: OrtCpuSettings, out_path: Path, log_path: Path,
                  exclude_nodes: Sequence[str] = (), exclude_op_types: Sequence[str] = (),
                  tensor_overrides: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """Quantize `model_path` for ORT's CPU EP at `out_path` (temporary name, then renamed).

    `tensor_overrides` (ORT's TensorQuantOverrides) fixes the scales of some tensors instead of
    calibrating them (the benchmark uses it to try ModelOpt's scales)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # heavy: loaded when used, not on --help

    model_path, out_path, log_path = Path(model_path), Path(out_path), Path(log_path)
    src = onnx.load(str(model_path))
    tail = decode_tail_nodes(src)
    if not tail:
        log.warning("no YOLO head found in %s: nothing is kept in float for decoding", model_path.name)
    vnni = cpu_has_vnni()
    reduce_range, rr_reason = resolve_reduce_range(settings.reduce_range, vnni)
    user = expand_exclusions(src, exclude_nodes, model_path.name)
    by_type = [n.name for n in src.graph.node if n.op_type in set(exclude_op_types)]
    shapes = shape_nodes(src)  # a dynamic-shape export's shape arithmetic (a static one has none)
    excluded = list(dict.fromkeys(tail + user + by_type + shapes))
    act = QuantType.QUInt8 if settings.activation_type == "uint8" else QuantType.QInt8
    ours = settings.calibrate_method in ort_ranges.METHODS
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}.get(settings.calibrate_method, CalibrationMethod.MinMax)
    extra: dict[str, Any] = {"CalibMaxIntermediateOutputs": CALIB_MERGE_EVERY}
    if settings.calibrate_method == "percentile":
        extra["CalibPercentile"] = settings.percentile
    t0 = time.perf_counter()
    ranges_rec = None
    with quantizer_workspace(out_path, log_path, ".ortq-") as (tmp_out, tmp_log, work):
        src_path, opset = with_min_opset(model_path, work)
        with PeakRSS() as mem, stderr_to(tmp_log):
            overrides = dict(tensor_overrides or {})
            if ours:
                # our estimator's ranges for every activation; ORT's calibrator then needs one sample
                # (it still runs, to learn which tensors it quantizes)
                t1 = time.perf_counter()
                ext, samples = ort_ranges.collect_extremes(src_path, reader)
                overrides = {**ort_ranges.range_overrides(ext, settings.calibrate_method), **overrides}
                ranges_rec = {"method": settings.calibrate_method, "samples": samples, "tensors": len(ext),
                              "pass_s": round(time.perf_counter() - t1, 3)}
                reader = FirstSampleReader(reader)
            if overrides:
                extra["TensorQuantOverrides"] = overrides
            safe = MinMaxSafeReader(reader, CALIB_MERGE_EVERY)
            quantize_static(str(src_path), str(tmp_out), safe, quant_format=QuantFormat.QDQ,
                            activation_type=act, weight_type=QuantType.QInt8, per_channel=settings.per_channel,
                            reduce_range=reduce_range, calibrate_method=method,
                            nodes_to_exclude=excluded, extra_options=extra,
                            calibration_providers=["CPUExecutionProvider"])
        wall = time.perf_counter() - t0
        restored, summary = checked_qdq(
            src, tmp_out, "ONNX Runtime", f"{len(excluded)} nodes kept in float: the decode and your exclusions; "
            "drop some --exclude-nodes / --exclude-op-types")
        if ours:
            missed = uncovered_activations(onnx.load(str(tmp_out)), set(overrides))
            if missed:
                raise RuntimeError(f"ort-cpu {settings.calibrate_method}: {len(missed)} quantized activations got no "
                                   f"estimated range (first: {missed[0]}); use --set ort_cpu.calibrate_method=minmax")
        kernels = ort_cpu_kernels(tmp_out)
        os.replace(tmp_out, out_path)
    return {
        "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
        "calibration": {"minmax": "minmax (asymmetric)", "mean-max": "mean-max (asymmetric, per-sample min/max averaged)"}.get(
            settings.calibrate_method, settings.calibrate_method), "ranges": ranges_rec,
        "activation_type": settings.activation_type, "weight_type": "int8", "per_channel": settings.per_channel,
        "reduce_range": reduce_range, "reduce_range_reason": rr_reason, "cpu_vnni": vnni,
        "decode_tail_nodes": tail, "excluded_nodes": user,
        "excluded_by_type": by_type, "shape_nodes_float": shapes,
        "source_opset": opset, "opset_converted_to": MIN_OPSET if opset < MIN_OPSET else None,
        "tensor_overrides": len(tensor_overrides or {}), "calib_samples": ranges_rec["samples"] if ranges_rec else len(reader), "wall_s": round(wall, 3), "peak_rss_mib": round(mem.peak / 2**20, 1),
        "rss_growth_mib": round((mem.peak - mem.start) / 2**20, 1), "metadata_props_restored": restored,
        "qdq": summary, "ort_cpu_kernels": kernels, "onnx_sha256": sha256_file(out_path),
    }
