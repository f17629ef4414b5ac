"""The readers, by the kind of source a `DataSpec` names: a new format is one module and one row."""

from __future__ import annotations

from tasks.evaluation.sources.base import DataReader, DataSpec, EvalData
from tasks.evaluation.sources.coco_json import CocoJsonReader
from tasks.evaluation.sources.yolo_dataset import YoloDatasetReader

READERS: dict[str, DataReader] = {"coco": CocoJsonReader(), "yolo": YoloDatasetReader()}


def reader(spec: DataSpec) -> DataReader:
    return READERS[spec.kind]


def read_data(spec: DataSpec) -> EvalData:
    """The source checked and read into the in-memory COCO form."""
    return reader(spec).read(spec)
