"""The interface every data source reader meets, and the in-memory form they all produce.

A run names its data with a `DataSpec` (small, picklable: it travels to worker processes, which read
the data again rather than receive it). A reader turns a spec into `EvalData`: a pycocotools COCO
object built in memory, the file of each image id, and the identity of the annotations as read
(their content hash, which the step cache keys evaluations on)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Split = Literal["val", "test"]


@dataclass(frozen=True)
class DataSpec:
    """The evaluated data as the user named it: a COCO instances file with its image folder, or an
    Ultralytics dataset file and the split to evaluate."""

    images: Path | None = None
    annotations: Path | None = None
    data: Path | None = None
    split: Split = "val"

    def __post_init__(self) -> None:  # str paths (a YAML's, a test's) become Paths: one form to compare
        for name in ("images", "annotations", "data"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, Path):
                object.__setattr__(self, name, Path(v))

    @property
    def kind(self) -> str:
        """The reader that reads it (sources/table.py)."""
        return "yolo" if self.data is not None else "coco"

    def label(self) -> str:
        """How messages and reports name it."""
        if self.data is not None:
            return f"dataset {self.data} ({self.split} split)"
        return f"annotation file {self.annotations}"

    def as_record(self) -> dict[str, Any]:
        return {"images": _str(self.images), "annotations": _str(self.annotations), "data": _str(self.data),
                "split": self.split}

    @staticmethod
    def from_record(rec: dict[str, Any]) -> "DataSpec":
        return DataSpec(**rec)


def _str(p: Path | None) -> str | None:
    return None if p is None else str(p)


@dataclass
class EvalData:
    """One data source, read: what the evaluator needs of it."""

    coco: Any  # pycocotools COCO, built in memory
    paths: dict[int, Path]  # image id -> image file
    digest: str  # sha256 of the annotations as read: the cache identity of the labels
    label: str  # how messages name the source ("annotation file X", "dataset X (val split)")
    # what the report says of the source: format, files, how a relative path was resolved
    record: dict[str, Any] = field(default_factory=dict)
    names_known: bool = True  # False: the categories' names are placeholders (a dataset file with nc only)

    def names(self) -> dict[int, str]:
        """category id -> name."""
        return {int(c["id"]): str(c["name"]) for c in self.coco.dataset["categories"]}


class DataReader(Protocol):
    """One format of evaluation data."""

    def read(self, spec: DataSpec) -> EvalData:
        """Check and read the source; raise AnnotationError (or FileNotFoundError, NotADirectoryError)
        naming the file, the line where there is one, and the fix."""
        ...

    def calibration_images(self, spec: DataSpec) -> list[Path] | None:
        """The images a run calibrates on when the user names none (a dataset's train split, never the
        evaluated split); None: this format has none to offer."""
        ...


def coco_index(dataset: dict[str, Any]) -> Any:
    """A pycocotools COCO object over a dataset dict already checked (images, annotations, categories)."""
    from pycocotools.coco import COCO  # heavy: loaded when used, not on --help

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco
