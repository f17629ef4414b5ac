"""INT8 post-training quantization with NVIDIA ModelOpt ONNX PTQ, and what it did to the graph."""

from __future__ import annotations

import collections
import contextlib
import copy
import inspect
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import onnx
import psutil

from tasks.config import ConfigError, QuantSettings
from tasks.quantization.calibration import CalibReader
from tasks.run.faults import fault_point
from tasks.run.rundir import atomic_copy, sha256_file, temp_sibling
from tasks.evaluation.runtime import probe_provider
from tasks.quantization.graph import consumer_map, producer_map
from tasks.quantization.entropy import apply_calibration_cache, write_calibration_cache
from tasks.quantization.ranges import HISTOGRAM_METHODS, histogram_scales

log = logging.getLogger(__name__)

# Ops whose float compute Q/DQ is meant to replace; one of these without a DequantizeLinear on
# its data input after PTQ was left in float.
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")

_EP_ALIASES = {"cpu": "CPUExecutionProvider", "trt": "TensorrtExecutionProvider"}


def _ep_provider(ep: str) -> str:
    return "CUDAExecutionProvider" if ep.startswith("cuda") else _EP_ALIASES[ep]


def resolve_calibration_eps(requested: Sequence[str], available: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Keep the requested calibration EPs this ORT build offers (cpu last); say why others were dropped.

    ModelOpt itself logs and skips an EP it cannot enable; deciding here makes the choice visible in
    the run record and keeps ModelOpt from spending time on EPs that cannot work.
    """
    kept, reasons = [], []
    for ep in requested:
        prov = _ep_provider(ep)
        ok, why = probe_provider(prov) if available is None else \
            (prov in available, f"available: {', '.join(available)}")
        if ok:
            kept.append(ep)
        else:
            reasons.append(f"calibration EP {ep} skipped: {why}")
    if "cpu" not in kept:
        kept.append("cpu")
    kept = [e for e in kept if e != "cpu"] + ["cpu"]
    return kept, reasons


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send fd 2 (ONNX Runtime's C++ logging, ModelOpt's stray prints) to the log file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class PeakRSS:
    """Sample this process's resident memory while a block runs (peak in MiB)."""

    def __init__(self, interval: float = 0.05) -> None:
        self._proc, self._interval = psutil.Process(), interval
        self.peak = self.start = self._proc.memory_info().rss
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> "PeakRSS":
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def qdq_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Count Q/DQ nodes and list quantizable nodes left in float (no DequantizeLinear feeding input 0)."""
    producers = producer_map(model)
    q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    dq = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    quantized, left_float = [], []
    conv_total = conv_q = 0
    for n in model.graph.node:
        if n.op_type not in QUANTIZABLE_OPS:
            continue
        src = producers.get(n.input[0])
        is_q = src is not None and src.op_type == "DequantizeLinear"
        (quantized if is_q else left_float).append(n.name)
        if n.op_type == "Conv":
            conv_total += 1
            conv_q += is_q
    topk_qdq = []
    for n in model.graph.node:
        if n.op_type == "TopK":
            src = producers.get(n.input[0])
            if src is not None and src.op_type == "DequantizeLinear":
                topk_qdq.append(n.name)
    total = len(quantized) + len(left_float)
    return {"conv_total": conv_total, "conv_quantized": conv_q,
            "conv_quantized_share": round(conv_q / conv_total, 4) if conv_total else 0.0,
            "quantize_linear": q, "dequantize_linear": dq, "qdq_nodes": q + dq,
            "quantizable_nodes": total, "quantized_nodes": len(quantized),
            "quantized_share": round(len(quantized) / total, 4) if total else 0.0,
            "left_in_float": left_float, "topk_with_qdq_input": topk_qdq}


_MODULE = re.compile(r"^(.*?/model\.(\d+))/")


def head_final_convs(model: onnx.ModelProto) -> list[str]:
    """The detection head's final convolutions: in the last `/model.N/` module, the Conv nodes none
    of whose consumers is another Conv (they feed the Concat/Reshape that forms boxes and scores).
    One rule covers YOLOv5 (`m.0..2`), YOLOv8/11 (`cv2.i.2`, `cv3.i.2`) and YOLOv10 (`one2one_cv*.i.2`)."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    mods = [(int(m.group(2)), m.group(1)) for n in convs if (m := _MODULE.match(n.name))]
    if not mods:
        return []
    head = max(mods)[1] + "/"
    consumers = consumer_map(model)

    def feeds_conv(name: str, depth: int = 0) -> bool:
        # look through activations (SiLU = Sigmoid * Mul) to the next op that computes
        for c in consumers.get(name, []):
            if c.op_type == "Conv":
                return True
            if c.op_type in ("Sigmoid", "Mul", "Relu", "Add") and depth < 3 and any(
                    feeds_conv(o, depth + 1) for o in c.output):
                return True
        return False

    return [n.name for n in convs if n.name.startswith(head) and not feeds_conv(n.output[0])]


def decode_tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Every node downstream of the head's final convolutions: the decode (DFL softmax, anchors,
    strides, score sigmoid, TopK/gather). Integer kernels there coarsen boxes and scores for little
    speed, so targets built for ORT keep it in float; a model with no recognisable head gives []."""
    finals = set(head_final_convs(model))
    consumers = consumer_map(model)
    tail: dict[str, None] = {}
    todo = [o for n in model.graph.node if n.name in finals for o in n.output]
    while todo:
        for c in consumers.get(todo.pop(), []):
            if c.name not in tail:
                tail[c.name] = None
                todo.extend(c.output)
    return [n.name for n in model.graph.node if n.name in tail]


def shape_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that compute from tensor shapes alone (a Shape op's output, constants): in a dynamic-shape
    export, the anchor grid and reshape targets its decode builds from the feature maps' sizes. Their
    values do not depend on the image, and quantizing them (ORT's quantize_static would: an Add, a
    Concat) moves every anchor by up to half a quantization step, so they stay in float, as NNCF
    leaves ShapeOf subgraphs out. A static export, whose exporter folded them into constants, has none."""
    known = {i.name for i in model.graph.initializer}
    derived: set[str] = set()  # outputs computed from a shape (and constants)
    out: list[str] = []
    for n in model.graph.node:  # topologically sorted, as onnx.checker requires
        ins = [i for i in n.input if i]
        if n.op_type == "Shape" or (n.op_type != "Constant" and ins and any(i in derived for i in ins)
                                    and all(i in derived or i in known for i in ins)):
            derived.update(n.output)
            if n.op_type != "Shape":
                out.append(n.name)
        elif n.op_type == "Constant" or (ins and all(i in known for i in ins)):
            known.update(n.output)
    return out


def ort_optimized_graph(model_path: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU EP actually runs, after its Q/DQ fusions (fused nodes keep the
    names of the nodes they replace)."""
    import onnxruntime as ort  # heavy: loaded when used, not on --help

    with tempfile.TemporaryDirectory() as td:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        # EXTENDED, not ALL: the layout transforms of level ALL are hardware-specific and not
        # serialisable; the Q/DQ -> QLinear* fusions happen at this level already
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(td) / "opt.onnx")
        ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def ort_cpu_kernels(model_path: Path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime's CPU EP runs: how many convolutions became integer
    kernels (QLinearConv) and how many stayed float (Conv)."""
    counts = collections.Counter(n.op_type for n in ort_optimized_graph(model_path).graph.node)
    keep = ("QLinearConv", "Conv", "FusedConv", "QLinearMatMul", "MatMulInteger", "QLinearSigmoid", "QLinearMul",
            "QLinearAdd", "QLinearConcat", "QuantizeLinear", "DequantizeLinear")
    return {k: counts[k] for k in keep if counts[k]}


def compile_exclusions(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """The user's --exclude-nodes regexes, compiled; a bad one is a ConfigError naming it (the run's
    input check calls this before any work)."""
    out = []
    for pat in patterns:
        try:
            out.append(re.compile(pat))
        except re.error as e:
            raise ConfigError(f"--exclude-nodes pattern {pat!r} is not a valid regex ({e})") from None
    return out


def expand_exclusions(model: onnx.ModelProto, patterns: Sequence[str], model_name: str = "the model") -> list[str]:
    """Node names matched from their start by the user's --exclude-nodes regexes (ORT wants exact
    names; ModelOpt takes the patterns but says nothing of a bad or unmatched one)."""
    out = []
    for pat, rx in zip(patterns, compile_exclusions(patterns)):
        hits = [n.name for n in model.graph.node if rx.match(n.name)]
        if not hits:
            log.warning("exclude-nodes pattern %r matches no node of %s", pat, model_name)
        out += hits
    return out


@contextlib.contextmanager
def quantizer_workspace(out_path: Path, log_path: Path, prefix: str) -> Iterator[tuple[Path, Path, Path]]:
    """(temporary model path, temporary log path, private work folder) for one quantizer call.

    The model reaches `out_path` only through the caller's os.replace once it is checked; the log is
    kept whatever happens (it says why a run failed); the rest is removed."""
    tmp_out, tmp_log = temp_sibling(out_path), temp_sibling(log_path)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=out_path.parent))
    try:
        yield tmp_out, tmp_log, work
    finally:
        tmp_out.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        if tmp_log.exists():
            atomic_copy(tmp_log, log_path)
            tmp_log.unlink()


def checked_qdq(src: onnx.ModelProto, path: Path, tool: str, hint: str = "check exclusions") -> tuple[int, dict[str, Any]]:
    """Restore metadata into a freshly written Q/DQ model and summarise it; refuse one with no Q/DQ."""
    restored = copy_metadata(src, path)
    summary = qdq_summary(onnx.load(str(path)))
    if summary["qdq_nodes"] == 0:
        raise RuntimeError(f"{tool} inserted no Q/DQ node: nothing was quantized ({hint})")
    return restored, summary


def copy_metadata(src: onnx.ModelProto, dst_path: Path) -> int:
    """ModelOpt drops metadata_props (Ultralytics keeps names, stride, imgsz there): put them back."""
    dst = onnx.load(str(dst_path))
    have = {p.key for p in dst.metadata_props}
    added = 0
    for p in src.metadata_props:
        if p.key not in have:
            entry = dst.metadata_props.add()
            entry.key, entry.value = p.key, p.value
            added += 1
    if added:
        onnx.save(dst, str(dst_path))
    return added


def _eps_enabled_from_log(log_path: Path) -> list[str]:
    """ModelOpt logs 'Successfully enabled N EPs for ORT: [...]'; the first one calibrates."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    found = re.findall(r"Successfully enabled \d+ EPs for ORT: (\[.*\])", text)
    if not found:
        return []
    return re.findall(r"(\w+ExecutionProvider)", found[-1])


@contextlib.contextmanager
def ort_quantization_restored() -> Iterator[None]:
    """Undo, on exit, the monkey-patches ModelOpt applies to onnxruntime.quantization.

    ModelOpt replaces ORT calibrator and quantizer methods process-wide when it runs (its
    `patch_ort_modules`) and edits ORT's op registries in place (it deletes Sigmoid, Softmax,
    Concat, Split ... from `QLinearOpsRegistry` and `QDQRegistry`, which decide what ORT's quantizer
    quantizes by default); an ORT `quantize_static` later in the same process (the ort-cpu
    target, the peer benchmark) would then quantize another set of ops, with ModelOpt's
    TensorRT-oriented calibration. So both are restored: every attribute of the modules and their
    classes, and the contents of their module-level dicts, lists and sets (in place: other modules
    hold the same objects through `from ... import`)."""
    import onnxruntime.quantization  # noqa: F401  (loads the submodules snapshotted below)

    saved: list[tuple[Any, str, Any]] = []
    contents: dict[int, tuple[Any, Any]] = {}
    for name, mod in list(sys.modules.items()):
        if not name.startswith("onnxruntime.quantization") or mod is None:
            continue
        for attr, val in list(vars(mod).items()):
            saved.append((mod, attr, val))
            if isinstance(val, (dict, list, set)):
                contents.setdefault(id(val), (val, copy.copy(val)))
            if inspect.isclass(val) and val.__module__ == name:
                saved.extend((val, a, v) for a, v in list(vars(val).items()) if not a.startswith("__") or a == "__init__")
    try:
        yield
    finally:
        for owner, attr, val in saved:
            if owner.__dict__.get(attr, None) is not val:
                setattr(owner, attr, val)
        for live, before in contents.values():
            if live == before:
                continue
            if isinstance(live, list):
                live[:] = before
            else:
                live.clear()
                live.update(before)


def uses_histograms(settings: QuantSettings) -> bool:
    """Whether `settings.method` starts from ModelOpt's max scales and replaces them from the
    streamed histogram pass (every method but max; ModelOpt's own entropy calibrator is not used:
    its histograms grow without bound, ~100x the time of max, tasks/quantization/entropy.py)."""
    return settings.method in HISTOGRAM_METHODS


def run_ptq(model_path: Path, input_name: str, calib: Any, settings: QuantSettings, out_path: Path,
            log_path: Path, seed: int = 0, max_model: Path | None = None,
            stats: tuple[dict[str, Any], int] | None = None) -> dict[str, Any]:
    """Quantize `model_path` to INT8 Q/DQ at `out_path`; returns what was done, for config.json.

    `calib` is a `CalibReader` (streamed: memory does not grow with the sample count) or an array.
    For the histogram estimators, `max_model` (ModelOpt's max output for the same model, samples and
    settings) and `stats` (their histogram pass) are the two passes already made: a method sweep
    over one calibration set pays for them once."""
    from modelopt.onnx.quantization import quantize  # heavy: loaded when used, not on --help

    model_path, out_path, log_path = Path(model_path), Path(out_path), Path(log_path)
    eps, ep_reasons = resolve_calibration_eps(settings.calib_eps)
    for r in ep_reasons:
        log.warning(r)
    op_excl = settings.effective_op_types_to_exclude()
    src_model = onnx.load(str(model_path))
    expand_exclusions(src_model, settings.exclude_nodes, model_path.name)  # checked here; ModelOpt takes the patterns
    nodes_excl = list(settings.exclude_nodes)
    # every method but max starts from ModelOpt's max scales and replaces
    # them from one streamed histogram pass (tasks/quantization/ranges.py)
    from_histograms = uses_histograms(settings)
    args: dict[str, Any] = {
        "quantize_mode": "int8",
        "calibration_method": "max" if from_histograms else settings.method,
        "calibration_eps": eps,
        "op_types_to_exclude": op_excl,
        "nodes_to_exclude": nodes_excl or None,
        # float16 parts are the finished model's last step (float16_parts): recovery, the histogram pass and
        # dq_only read the float32 Q/DQ model
        "high_precision_dtype": "fp32",
        "log_level": "INFO",
    }
    if not isinstance(calib, CalibReader):
        calib = CalibReader(np.asarray(calib), input_name)
    if settings.method == "entropy":
        # ORT's entropy depends on sample order (its search starts at the first sample's range;
        # the bounded path keeps that): shuffle with the recorded seed. Max does not depend on it.
        calib = calib.with_seed(seed)
    calib.rewind()
    sample_shape = [len(calib), *calib.get_first()[input_name].shape[1:]]
    t0 = time.perf_counter()
    with quantizer_workspace(out_path, log_path, ".modelopt-") as (tmp_out, tmp_log, work):
        # ModelOpt writes intermediate models next to its input and was seen rewriting the input
        # file itself (its sha256 changed after a run): it only ever sees a private copy.
        work_model = work / model_path.name
        shutil.copyfile(model_path, work_model)
        with PeakRSS() as mem, stderr_to(tmp_log), ort_quantization_restored():
            if from_histograms and max_model is not None:
                shutil.copyfile(max_model, tmp_out)
                tmp_log.write_text(f"ModelOpt's max pass reused from {max_model}\n")
            else:
                quantize(onnx_path=str(work_model), calibration_data_reader=calib,
                         output_path=str(tmp_out), log_file=str(tmp_log), **args)
            if not tmp_out.exists() or tmp_out.stat().st_size == 0:
                raise RuntimeError(f"ModelOpt wrote no model; see {log_path}")
            fault_point("ptq-written")  # ModelOpt's output exists, under its temporary name only
            ranges_rec = None
            if from_histograms:
                ranges_rec = _apply_histogram_ranges(model_path, tmp_out, calib, settings,
                                                     out_path.parent / f"{settings.method}-calibration.cache", stats)
        wall = time.perf_counter() - t0
        restored, summary = checked_qdq(src_model, tmp_out, "ModelOpt")
        os.replace(tmp_out, out_path)
    enabled = _eps_enabled_from_log(log_path)
    return {
        "args": {**args, "calibration_data_reader": {input_name: sample_shape, "order": calib.order[:8] + (
                     ["..."] if len(calib.order) > 8 else []), "streamed": True}, "onnx_path": str(model_path)},
        "calibration_eps_requested": list(settings.calib_eps),
        "calibration_eps_passed": eps,
        "calibration_eps_reasons": ep_reasons,
        "calibration_ep_used": enabled[0] if enabled else _ep_provider(eps[0]),
        "ort_eps_enabled": enabled,
        "metadata_props_restored": restored,
        "wall_s": round(wall, 3),
        "peak_rss_mib": round(mem.peak / 2**20, 1),
        "rss_growth_mib": round((mem.peak - mem.start) / 2**20, 1),
        "qdq": summary,
        "onnx_sha256": sha256_file(out_path),
        "seed": seed,
        "ranges": ranges_rec,
        "entropy": ranges_rec if settings.method == "entropy" else None,
    }


def _apply_histogram_ranges(fp32_path: Path, qdq_path: Path, reader: Any, settings: Any,
                            cache_path: Path, stats: tuple[dict[str, Any], int] | None = None) -> dict[str, Any]:
    """Max-calibrated Q/DQ model -> scales by the settings' range estimator (tasks/quantization/ranges.py),
    written as a TensorRT calibration cache and applied with ModelOpt's cache reader."""
    t0 = time.perf_counter()
    rec = histogram_scales(fp32_path, onnx.load(str(qdq_path)), reader, settings.method, settings, stats=stats)
    write_calibration_cache(cache_path, rec["scales"])
    replaced = apply_calibration_cache(qdq_path, cache_path)
    ratios = [rec["scales"][t] / s for t, s in rec["max_scales"].items() if s > 0]
    return {"impl": "histogram", "method": settings.method, "bins": rec["bins"], "samples": rec["samples"], "tensors": len(rec["scales"]),
            "scales_replaced": replaced, "shared_scale_groups": len(rec["groups"]),
            "histogram_s": rec["histogram_s"], "reused_stats": rec["reused_stats"], "search_s": rec["search_s"],
            "wall_s": round(time.perf_counter() - t0, 3),
            "threshold_vs_max": {"min": round(min(ratios), 4), "median": round(float(np.median(ratios)), 4),
                                 "max": round(max(ratios), 4)} if ratios else None,
            "cache": cache_path.name}


def float16_parts(model: onnx.ModelProto, qdq_in_fp32: bool = False) -> onnx.ModelProto:
    """ModelOpt's own last step of `quantize(quantize_mode="int8", high_precision_dtype="fp16")`
    (precision_utils._convert_to_runtime_precision): every float tensor outside the Q/DQ integers made
    float16 by `autocast.convert_to_f16`, the model's inputs and outputs kept float32. Applied here to
    the finished model (after recovery and dq_only), so every pass before it ran on the float32 model.
    `qdq_in_fp32`: QuantizeLinear / DequantizeLinear kept in float32 behind casts (the evaluation twin,
    for a runtime whose fp16 QuantizeLinear does not round to nearest: `runtime.fp16_quantize_rounding`)."""
    from modelopt.onnx.autocast import convert_to_f16  # heavy: loaded when used, not on --help

    return convert_to_f16(model, low_precision_type="fp16", keep_io_types=True,
                          op_block_list=["QuantizeLinear", "DequantizeLinear"] if qdq_in_fp32 else [])


# Consumers ModelOpt's qdq_to_dq knows the weight axis of (its axis_map); anything else makes it fail.
_DQ_ONLY_CONSUMERS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _weight_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return {"Conv": 0, "ConvTranspose": 1, "MatMul": 1}[node.op_type]


def _dq_only_blocker(model: onnx.ModelProto) -> str | None:
    """Why ModelOpt's qdq_to_dq would fail or change meaning on this model, or None. It converts every
    QuantizeLinear fed by an initializer and stops at the first it cannot, so we check them all first."""
    inits = {i.name: i for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    consumers = consumer_map(model)
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] not in inits:
            continue
        w = inits[n.input[0]]
        if w.name in graph_inputs or len(consumers.get(w.name, [])) != 1:
            return f"weight {w.name} is also read elsewhere"
        if w.data_type != onnx.TensorProto.FLOAT:
            # fp16 weights (high_precision_dtype=fp16): qdq_to_dq divides in fp16 and was seen to move
            # about 1% of the weights by one step against ORT's QuantizeLinear
            return f"weight {w.name} is not float32"
        dqs = consumers.get(n.output[0], [])
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
            return f"{n.name} does not feed exactly one DequantizeLinear"
        users = consumers.get(dqs[0].output[0], [])
        if not users or any(u.op_type not in _DQ_ONLY_CONSUMERS or u.input[1] != dqs[0].output[0] for u in users):
            return f"the weight {w.name} feeds {sorted({u.op_type for u in users})}, not only Conv/MatMul weights"
        scale = inits.get(n.input[1])
        zp = inits.get(n.input[2]) if len(n.input) > 2 else None
        axis = _weight_axis(users[0])
        if scale is None or len(scale.dims) != 1 or scale.dims[0] != w.dims[axis]:
            return f"{n.name} has no per-channel scale"  # qdq_to_dq reshapes a per-channel scale only
        if zp is None or zp.data_type != onnx.TensorProto.INT8:
            return f"{n.name} has no int8 zero point"
    return None


def weights_dq_only(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """ModelOpt's `dq_only` applied to a finished Q/DQ model: each Conv weight is stored as INT8 and
    read through its DequantizeLinear, its QuantizeLinear gone (`qdq_utils.qdq_to_dq`, the function
    `quantize(dq_only=True)` calls). The dequantized weights are the same numbers (round half to even,
    as ONNX QuantizeLinear), so ORT gives identical outputs; the file is about 4x smaller in weights,
    and TensorRT takes pre-quantized weights behind a DequantizeLinear ("Quantized Weights",
    TensorRT's explicit-quantization guide). Applied after recovery, so the layers put back in float
    keep FP32 weights. Returns (model, record); the model is unchanged when a weight pattern is one
    qdq_to_dq cannot convert (the record says which)."""
    blocker = _dq_only_blocker(model)
    q_before = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    if blocker is not None:
        return model, {"applied": False, "reason": blocker}
    from modelopt.onnx.quantization.qdq_utils import qdq_to_dq  # heavy: loaded when used, not on --help

    out = onnx.ModelProto()
    out.CopyFrom(model)
    out = qdq_to_dq(out)
    q_after = sum(n.op_type == "QuantizeLinear" for n in out.graph.node)
    return out, {"applied": True, "weights_int8": q_before - q_after, "function": "modelopt qdq_utils.qdq_to_dq"}
