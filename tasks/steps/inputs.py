"""The run's inputs, checked before any work: the command line calls this before a Prefect server
starts and the flow's first step calls it again (a deployment's parameters arrive there), so bad input
costs seconds, gets the same one-line message either way, and leaves no run folder behind."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from tasks.config import ConfigError, RunConfig
from tasks.evaluation.coco_eval import AnnotationError, SubsetError
from tasks.evaluation.decode import DecodeError
from tasks.evaluation.evaluate import EvalSetup, prepare_eval
from tasks.evaluation.runtime import ModelError
from tasks.evaluation.sources.base import DataSpec, EvalData
from tasks.evaluation.sources.table import read_data
from tasks.quantization.calibration import (CalibrationError, check_calib_array, check_calib_images, check_overlap,
                                            open_array)
from tasks.quantization.modelopt_ptq import compile_exclusions
from tasks.quantization.torch_graph import check_supported
from tasks.steps.calibrate import calibration_images
from tasks.steps.guard_data import GuardSet, choose_guard_set
from tasks.targets.table import missing_modules


@dataclass
class Inputs:
    """What the checks read, handed on so the run does not read it twice."""

    cfg: RunConfig  # resolved: demo paths and defaults filled in
    setup: EvalSetup  # the model's input and decoder, the annotations, the evaluated images
    guard: GuardSet | None = None  # auto mode: the images it chooses on, apart from the reported ones

    @property
    def eval_files(self) -> list[Path]:
        return [p for _, p in self.setup.items]


# The annotations are the slow input to check (val2017's file is 450 MB of JSON): the command line's
# check and the flow's first step share one read when they run in one process, keyed by the source
# and its file's identity so an edited file is read again.
_DATA_MEMO: dict[tuple[Any, ...], EvalData] = {}


def _read(spec: DataSpec) -> EvalData:
    path = Path(spec.data or spec.annotations or "")
    try:
        st = path.stat()
    except OSError:
        return read_data(spec)  # names the missing file
    key = (spec, str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DATA_MEMO:
        _DATA_MEMO.clear()  # one source at a time: a COCO object of val2017 holds about 1 GB
        _DATA_MEMO[key] = read_data(spec)
    return _DATA_MEMO[key]


def check_inputs(cfg: RunConfig) -> Inputs:
    """Resolve the settings and check every input the run reads: the calibration folder (listed, and
    holding at least calib_count images), the ONNX model (parsed and checked), the image folder, the
    annotations (parsed), the subset (it selects images that exist, no more than the file lists), the
    class map, a calibration tensor's shape and values, and every calibration image the run will read
    (decoded, and none of them in the evaluated subset: with --data and no calibration named, a seeded
    draw from the dataset's train split). Raises ConfigError, FileNotFoundError,
    NotADirectoryError, ModelError, DecodeError (an output no decoder reads), CalibrationError,
    AnnotationError or SubsetError with a message naming the input and the fix."""
    cfg = cfg.resolved()
    _check_targets_and_patterns(cfg)
    if cfg.calib is None:
        calib_files, _ = calibration_images(cfg)  # the folder or the train split lists enough images
    # the evaluation's own checks: model, image folder, annotations or dataset, subset, class names, image files
    setup = prepare_eval(cfg.model, cfg.eval_data(), cfg.subset, cfg.eval, cfg.subset_seed, read=_read)
    # the calibration data's contents: a tensor's values (a 0-255 tensor, NaN), or the images the run
    # will calibrate on (each one decoded, none of them evaluated too)
    if cfg.calib is not None:
        check_calib_array(open_array(Path(cfg.calib), setup.input_name), setup.in_shape, cfg.eval.preprocess,
                          str(cfg.calib))
    else:
        check_calib_images(calib_files)
        check_overlap(calib_files, [p for _, p in setup.items], cfg.allow_calib_overlap)
    if cfg.reconstruction.mode != "off":
        _check_reconstruction(cfg)
    cfg, setup, guard = choose_guard_set(cfg, setup, _read)
    return Inputs(cfg=cfg, setup=setup, guard=guard)


def _check_reconstruction(cfg: RunConfig) -> None:
    """Reconstruction runs the model in torch: every op type must be one the converter runs."""
    if importlib.util.find_spec("torch") is None:
        raise ConfigError(f"--reconstruct {cfg.reconstruction.mode} needs torch, which this environment cannot "
                          "import; install the project's dependencies (make install), or set --reconstruct off")
    bad = check_supported(onnx.load(str(cfg.model), load_external_data=False))
    if bad:
        raise ConfigError(f"--reconstruct {cfg.reconstruction.mode}: the model {cfg.model} holds op types the torch "
                          f"converter does not run ({', '.join(bad)}); set --reconstruct off, or add them to "
                          "tasks/quantization/torch_graph.py OPS")


def _check_targets_and_patterns(cfg: RunConfig) -> None:
    """Every target's packages importable, every --exclude-nodes pattern a valid regex."""
    for t in cfg.targets:
        missing = missing_modules(t)
        if missing:
            raise ConfigError(f"target {t} needs the Python package(s) {', '.join(missing)}, which this environment "
                              f"cannot import; install the project's dependencies (make install, or pip install -e .)")
    compile_exclusions(cfg.quant.exclude_nodes)
    if cfg.quant.high_precision_dtype == "fp16":
        if "tensorrt" not in cfg.targets:
            raise ConfigError(f"quant.high_precision_dtype=fp16 makes the tensorrt model's float parts float16 (for a "
                              f"TensorRT engine); the targets {', '.join(cfg.targets)} run their own float precision. "
                              f"Add --target tensorrt, or drop the setting")
        if cfg.reconstruction.mode != "off":
            raise ConfigError(f"--reconstruct {cfg.reconstruction.mode} learns on the float32 Q/DQ model, which "
                              f"quant.high_precision_dtype=fp16 turns into float16 first; use one or the other")


def input_error_types() -> tuple[type[BaseException], ...]:
    """The errors `check_inputs` raises for bad input (the command line turns them into one line)."""
    return (ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ModelError,
            DecodeError, CalibrationError, AnnotationError, SubsetError)

