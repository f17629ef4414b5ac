"""A COCO instances file beside the folder of its images (`--images DIR --annotations JSON`)."""

from __future__ import annotations

from pathlib import Path

from tasks.evaluation.coco_eval import load_coco
from tasks.evaluation.sources.base import DataSpec, EvalData
from tasks.run.rundir import sha256_file


class CocoJsonReader:
    def read(self, spec: DataSpec) -> EvalData:
        if spec.images is None or spec.annotations is None:
            raise FileNotFoundError("a COCO evaluation set needs --images DIR and --annotations JSON "
                                    "(or --data DATA.yaml for an Ultralytics dataset)")
        images_dir = Path(spec.images)
        if images_dir.exists() and not images_dir.is_dir():
            raise NotADirectoryError(f"image folder {images_dir} is a file, not a folder; pass --images with the "
                                     f"folder the annotation file describes")
        if not images_dir.is_dir():
            raise FileNotFoundError(f"image folder {images_dir} does not exist; pass --images with the folder the "
                                    f"annotation file describes")
        coco = load_coco(Path(spec.annotations))
        paths = {int(im["id"]): images_dir / im["file_name"] for im in coco.dataset["images"]}
        return EvalData(coco=coco, paths=paths, digest=sha256_file(Path(spec.annotations)), label=spec.label(),
                        record={"format": "coco", "annotations": str(spec.annotations), "images": str(images_dir)})

    def calibration_images(self, spec: DataSpec) -> list[Path] | None:
        return None  # a COCO file describes the evaluated images only
