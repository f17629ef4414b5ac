"""The images auto mode chooses on, apart from the images whose delta the run reports.

Auto mode picks a calibration method and the layers kept in float by their mAP on annotated images;
scored on the same images, its reported delta would be optimistic (it is the best of several tries
on that data). So it chooses on other annotated images, in this order:

1. `guard_images` + `guard_annotations` (+ `guard_subset`): a separate annotated set the user names;
2. images of `--annotations` outside the evaluated subset, present in `--images`, when at least
   `guard_min_images` exist (val2017 with `--subset 100`: thousands), a seeded sample of as many as
   are evaluated (at least 100 where there are);
3. otherwise a seeded split of the evaluated images: `guard_split` of them to choose on, the rest
   reported (the report says how many of each).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tasks.config import ConfigError, RunConfig
from tasks.evaluation.coco_eval import select_subset
from tasks.evaluation.evaluate import EvalSetup, prepare_eval


@dataclass
class GuardSet:
    """Where auto mode's candidates are evaluated."""

    images: Path
    annotations: Path
    subset: str  # ids:... of the chosen images
    files: list[Path]
    how: str  # separate | outside-subset | split
    description: str


def _ids(ids: list[int]) -> str:
    return "ids:" + ",".join(str(i) for i in sorted(ids))


def choose_guard_set(cfg: RunConfig, setup: EvalSetup,
                     load_annotations: Callable[[Path], Any]) -> tuple[RunConfig, EvalSetup, GuardSet | None]:
    """(settings, evaluation setup, guard set) for a run: unchanged with no guard set outside auto
    mode; in a split, the settings' subset and the setup become the reported part."""
    if cfg.accuracy_budget is None:
        return cfg, setup, None
    rng = np.random.default_rng(cfg.subset_seed + 1)  # apart from the evaluated subset's own draw
    if cfg.guard_images is not None:
        gs = prepare_eval(cfg.model, cfg.guard_images, cfg.guard_annotations, cfg.guard_subset,  # type: ignore[arg-type]
                          cfg.eval, cfg.subset_seed, load_annotations=load_annotations)
        if Path(cfg.guard_annotations).resolve() == Path(cfg.annotations).resolve():  # type: ignore[arg-type]
            shared = set(gs.image_ids) & set(setup.image_ids)
            if shared:
                raise ConfigError(f"{len(shared)} of auto mode's selection images are also evaluated; pass "
                                  f"guard images the run does not report on")
        return cfg, setup, GuardSet(Path(cfg.guard_images), Path(cfg.guard_annotations),  # type: ignore[arg-type]
                                    _ids(gs.image_ids), [p for _, p in gs.items], "separate",
                                    f"{len(gs.image_ids)} images of {cfg.guard_annotations}, a set the run does "
                                    f"not report on")
    coco = setup.coco
    evaluated = set(setup.image_ids)
    if cfg.guard_subset is not None:
        chosen = select_subset(coco, cfg.guard_subset, cfg.subset_seed, cfg.annotations)
        shared = set(chosen) & evaluated
        if shared:
            raise ConfigError(f"guard_subset {cfg.guard_subset!r} selects {len(shared)} evaluated images; auto mode "
                              f"must choose on images the run does not report on")
        others = chosen
    else:
        images_dir = Path(cfg.images)  # type: ignore[arg-type]
        others = [i for i in sorted(coco.getImgIds()) if i not in evaluated
                  and (images_dir / coco.imgs[i]["file_name"]).is_file()]
        if len(others) >= cfg.guard_min_images:
            want = min(len(others), max(len(evaluated), 100))
            others = sorted(rng.choice(others, size=want, replace=False).tolist())
    if len(others) >= cfg.guard_min_images or cfg.guard_subset is not None:
        gs = prepare_eval(cfg.model, cfg.images, cfg.annotations, _ids(others), cfg.eval,  # type: ignore[arg-type]
                          cfg.subset_seed, load_annotations=load_annotations)
        return cfg, setup, GuardSet(Path(cfg.images), Path(cfg.annotations), _ids(others),  # type: ignore[arg-type]
                                    [p for _, p in gs.items], "outside-subset",
                                    f"{len(others)} images of the annotation file outside the evaluated subset")
    ids = list(setup.image_ids)
    n_sel = int(round(len(ids) * cfg.guard_split))
    if n_sel < 1 or len(ids) - n_sel < 1:
        raise ConfigError(f"auto mode needs annotated images to choose on apart from the {len(ids)} it reports; "
                          f"evaluate more images, or pass --set guard_images=DIR --set guard_annotations=JSON")
    sel = set(rng.choice(ids, size=n_sel, replace=False).tolist())
    report = [i for i in ids if i not in sel]
    sel_files = [p for i, p in setup.items if i in sel]
    cfg = cfg.model_copy(update={"subset": _ids(report)})
    setup = dataclasses.replace(setup, image_ids=report, items=[(i, p) for i, p in setup.items if i not in sel])
    return cfg, setup, GuardSet(Path(cfg.images), Path(cfg.annotations), _ids(sorted(sel)), sel_files,  # type: ignore[arg-type]
                                "split", f"{len(sel)} of the {len(ids)} evaluated images (a seeded split; the other "
                                         f"{len(report)} are the reported ones)")
