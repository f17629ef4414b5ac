"""yolo-lowbit: plain, Prefect-free logic for each stage of the INT8 pipeline."""

__version__ = "0.1.0"
