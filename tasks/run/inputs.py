"""The run's inputs, checked before any work: the command line calls this before a Prefect server
starts and the flow's first step calls it again (a deployment's parameters arrive there), so bad input
costs seconds, gets the same one-line message either way, and leaves no run folder behind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from tasks.quantization.calibration import check_calib_shape, open_array
from tasks.evaluation.coco_eval import load_coco, select_subset
from tasks.config import RunConfig
from tasks.evaluation.evaluate import resolve_format
from tasks.evaluation.preprocess import list_images
from tasks.evaluation.runtime import check_model_file, model_io


@dataclass
class Inputs:
    """What the checks read, handed on so the run does not read it twice."""

    cfg: RunConfig  # resolved: demo paths and defaults filled in
    model: onnx.ModelProto
    input_name: str
    input_shape: tuple[int, int, int, int]
    output_format: str
    num_classes: int | None
    format_info: dict[str, Any]
    coco: Any
    image_ids: list[int]
    eval_files: list[Path]


# The annotation file is the slow input to check (val2017's is 450 MB of JSON): the command line's
# check and the flow's first step share one parse when they run in one process, keyed by the file's
# identity so an edited file is read again.
_COCO_MEMO: dict[tuple[str, int, int], Any] = {}


def _coco(path: Path) -> Any:
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return load_coco(path)  # names the missing file
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _COCO_MEMO:
        _COCO_MEMO.clear()  # one file at a time: a COCO object of val2017 holds about 1 GB
        _COCO_MEMO[key] = load_coco(path)
    return _COCO_MEMO[key]


def check_inputs(cfg: RunConfig) -> Inputs:
    """Resolve the settings and check every input the run reads, cheapest first: paths and types,
    the ONNX model (parsed and checked), the calibration source (header or folder listing), the
    annotations (parsed) and the subset (it selects images that exist). Raises ConfigError,
    FileNotFoundError, NotADirectoryError, ModelError, CalibrationError, AnnotationError or SubsetError
    with a message naming the input and the fix."""
    cfg = cfg.resolved()
    images = Path(cfg.images)  # type: ignore[arg-type]
    if images.exists() and not images.is_dir():
        raise NotADirectoryError(f"image folder {images} is a file, not a folder; pass --images with the folder the "
                                 f"annotation file describes")
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} does not exist; pass --images with the folder the annotation "
                                f"file describes")
    if cfg.calib_images is not None:
        list_images(cfg.calib_images, "--calib-images with a folder of images (or --calib with a tensor file)")

    model = check_model_file(cfg.model)
    input_name, in_shape, _ = model_io(model)
    fmt, nc, fmt_info = resolve_format(model, cfg.eval)
    if cfg.calib is not None:
        check_calib_shape(open_array(Path(cfg.calib), input_name), in_shape, str(cfg.calib))

    coco = _coco(cfg.annotations)  # type: ignore[arg-type]
    image_ids = select_subset(coco, cfg.subset, seed=cfg.subset_seed)
    eval_files = [images / coco.imgs[i]["file_name"] for i in image_ids]
    missing = [p for p in eval_files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image {missing[0]} ({len(missing)} of {len(eval_files)} evaluated images) is listed in "
                                f"the annotations but missing; check --images points at the folder they describe")
    return Inputs(cfg=cfg, model=model, input_name=input_name, input_shape=in_shape, output_format=fmt,
                  num_classes=nc, format_info=fmt_info, coco=coco, image_ids=image_ids, eval_files=eval_files)


def input_error_types() -> tuple[type[BaseException], ...]:
    """The errors `check_inputs` raises for bad input (the command line turns them into one line)."""
    from tasks.quantization.calibration import CalibrationError
    from tasks.evaluation.coco_eval import AnnotationError, SubsetError
    from tasks.config import ConfigError
    from tasks.evaluation.runtime import ModelError

    return (ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ModelError,
            CalibrationError, AnnotationError, SubsetError)

