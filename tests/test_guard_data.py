"""Auto mode chooses on annotated images it does not report (tasks/steps/guard_data.py)."""
from __future__ import annotations

import pytest

from tasks.config import ConfigError, RunConfig
from tasks.steps.inputs import check_inputs


def _cfg(tiny_model, data, **kw) -> RunConfig:
    return RunConfig.model_validate({
        "model": str(tiny_model), "images": str(data["images"]), "annotations": str(data["annotations"]),
        "calib_images": str(data["calib_images"]), "calib_count": 8, "eval": {"providers": ["cpu"]}, **kw})


def _ids(subset: str) -> set[int]:
    assert subset.startswith("ids:")
    return {int(x) for x in subset[4:].split(",")}


def test_no_guard_set_outside_auto_mode(tiny_model, tiny_data):
    inp = check_inputs(_cfg(tiny_model, tiny_data))
    assert inp.guard is None and inp.cfg.subset is None and len(inp.setup.image_ids) == 6


def test_without_other_images_the_evaluated_ones_are_split_and_only_the_rest_reported(tiny_model, tiny_data):
    inp = check_inputs(_cfg(tiny_model, tiny_data, accuracy_budget=0.5))
    g = inp.guard
    sel, rep = _ids(g.subset), set(inp.setup.image_ids)
    assert g.how == "split" and len(sel) == 3 and len(rep) == 3 and not sel & rep and sel | rep == set(range(1, 7))
    assert _ids(inp.cfg.subset) == rep and len(g.files) == 3 and len(inp.setup.items) == 3
    # seeded: the CLI's check and the flow's first step split alike
    assert check_inputs(_cfg(tiny_model, tiny_data, accuracy_budget=0.5)).guard.subset == g.subset


def test_images_outside_the_subset_are_used_when_there_are_enough(tiny_model, tiny_data):
    inp = check_inputs(_cfg(tiny_model, tiny_data, accuracy_budget=0.5, subset="2", guard_min_images=3))
    g = inp.guard
    assert g.how == "outside-subset" and _ids(g.subset) == {3, 4, 5, 6} and inp.setup.image_ids == [1, 2]
    assert inp.cfg.subset == "2"  # the reported images stay what the user asked for


def test_a_separate_set_and_an_overlapping_one(tiny_model, tiny_data, tmp_path):
    from tiny import tiny_coco

    images, ann = tiny_coco(tmp_path / "other", n=4, seed=5)
    g = check_inputs(_cfg(tiny_model, tiny_data, accuracy_budget=0.5, guard_images=str(images),
                          guard_annotations=str(ann))).guard
    assert g.how == "separate" and len(g.files) == 4
    with pytest.raises(ConfigError, match="must choose on images the run does not report on"):
        check_inputs(_cfg(tiny_model, tiny_data, accuracy_budget=0.5, subset="3", guard_subset="4"))
    with pytest.raises(ValueError, match="go together"):
        _cfg(tiny_model, tiny_data, guard_images=str(images))
