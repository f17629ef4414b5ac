"""The images auto mode chooses on, apart from the images whose delta the run reports.

Auto mode picks a calibration method and the layers kept in float by their mAP on annotated images;
scored on the same images, its reported delta would be optimistic (it is the best of several tries
on that data). So it chooses on other annotated images, in this order:

1. `guard_images` + `guard_annotations` (+ `guard_subset`): a separate annotated set the user names;
2. images of the evaluated data (`--annotations`, or `--data`'s split) outside the evaluated subset,
   present on disk, when at least `guard_min_images` exist (val2017 with `--subset 100`: thousands), a seeded sample of as many as
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
from tasks.evaluation.sources.base import DataSpec, EvalData


@dataclass
class GuardSet:
    """Where auto mode's candidates are evaluated."""

    source: DataSpec
    digest: str  # the annotations as read (EvalData.digest)
    subset: str  # ids:... of the chosen images
    files: list[Path]
    how: str  # separate | outside-subset | split
    description: str


def _ids(ids: list[int]) -> str:
    return "ids:" + ",".join(str(i) for i in sorted(ids))


def choose_guard_set(cfg: RunConfig, setup: EvalSetup,
                     read: Callable[[DataSpec], EvalData]) -> tuple[RunConfig, EvalSetup, GuardSet | None]:
    """(settings, evaluation setup, guard set) for a run: unchanged with no guard set outside auto
    mode; in a split, the settings' subset and the setup become the reported part."""
    if cfg.accuracy_budget is None:
        return cfg, setup, None
    rng = np.random.default_rng(cfg.subset_seed + 1)  # apart from the evaluated subset's own draw
    source = cfg.eval_data()
    separate = cfg.guard_data()
    if separate is not None:
        gs = prepare_eval(cfg.model, separate, cfg.guard_subset, cfg.eval, cfg.subset_seed, read=read)
        shared = {p.resolve() for _, p in gs.items} & {p.resolve() for _, p in setup.items}
        if shared:
            raise ConfigError(f"{len(shared)} of auto mode's selection images are also evaluated; pass "
                              f"guard images the run does not report on")
        return cfg, setup, GuardSet(separate, gs.data.digest, _ids(gs.image_ids), [p for _, p in gs.items], "separate",
                                    f"{len(gs.image_ids)} images of {cfg.guard_annotations}, a set the run does "
                                    f"not report on")
    coco = setup.coco
    evaluated = set(setup.image_ids)
    if cfg.guard_subset is not None:
        chosen = select_subset(coco, cfg.guard_subset, cfg.subset_seed, setup.data.label)
        shared = set(chosen) & evaluated
        if shared:
            raise ConfigError(f"guard_subset {cfg.guard_subset!r} selects {len(shared)} evaluated images; auto mode "
                              f"must choose on images the run does not report on")
        others = chosen
    else:
        others = [i for i in sorted(coco.getImgIds()) if i not in evaluated and setup.data.paths[i].is_file()]
        if len(others) >= cfg.guard_min_images:
            want = min(len(others), max(len(evaluated), 100))
            others = sorted(rng.choice(others, size=want, replace=False).tolist())
    if len(others) >= cfg.guard_min_images or cfg.guard_subset is not None:
        gs = prepare_eval(cfg.model, source, _ids(others), cfg.eval, cfg.subset_seed, read=read)
        return cfg, setup, GuardSet(source, gs.data.digest, _ids(others), [p for _, p in gs.items], "outside-subset",
                                    f"{len(others)} images of {setup.data.label} outside the evaluated subset")
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
    return cfg, setup, GuardSet(source, setup.data.digest, _ids(sorted(sel)), sel_files, "split",
                                f"{len(sel)} of the {len(ids)} evaluated images (a seeded split; the other "
                                f"{len(report)} are the reported ones)")
