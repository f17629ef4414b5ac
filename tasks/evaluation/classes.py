"""Which category of the data each class index of the model scores as: the model's class names
(Ultralytics exports carry them as metadata `names`) checked against the data's, before any work.

The same names in the same order: index order, as always (COCO's 80 Ultralytics names against
COCO 2017's 91-id file are exactly this case). The same names in another order: matched by name,
and the report says so. Any other difference is refused, naming the first mismatches: a detector
scored against another class list gives a meaningless mAP with no error anywhere else. An explicit
class map wins over names; a model without names is matched by index, and the report says the
names could not be checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tasks.evaluation.coco_eval import AnnotationError

_MAP_HINT = "pass --class-map with one category id per class index (int8: --set eval.class_map=...)"


@dataclass
class ClassMatch:
    cat_ids: list[int]  # class index -> category id
    how: str  # explicit | names-in-order | by-name | unchecked
    note: str  # one sentence for the report

    def as_record(self) -> dict[str, object]:
        return {"how": self.how, "note": self.note}


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def match_classes(data_names: dict[int, str], model_names: dict[int, str] | None, nc: int | None,
                  explicit: Sequence[int] | None = None, data_label: str = "the data",
                  data_names_known: bool = True) -> ClassMatch:
    """class index -> category id. `data_names`: category id -> name; `model_names`: class index ->
    name (None: the export carries none); `nc`: the classes the model's output holds (None: unknown)."""
    cat_ids = sorted(data_names)
    if explicit is not None:
        explicit = [int(c) for c in explicit]
        unknown = sorted(set(explicit) - set(cat_ids))
        if unknown:
            raise AnnotationError(f"class map names category ids {unknown} that {data_label} does not have")
        if nc is not None and len(explicit) < nc:
            raise AnnotationError(f"class map has {len(explicit)} entries but the model predicts {nc} classes")
        return ClassMatch(explicit, "explicit", "classes matched by the class map given (names not checked)")
    n_model = len(model_names) if model_names else nc
    if model_names is None or not data_names_known:
        if nc is not None and nc != len(cat_ids):
            raise AnnotationError(
                f"the model predicts {nc} classes but {data_label} has {len(cat_ids)} categories; {_MAP_HINT}")
        why = "the model carries no class names (metadata names)" if model_names is None else \
            f"{data_label} gives no class names (nc only)"
        return ClassMatch(cat_ids, "unchecked", f"class i scored as the i-th category in id order; the names could "
                                                f"not be checked: {why}")
    keys = sorted(model_names)
    model = [_norm(model_names[k]) for k in keys]
    data = [_norm(data_names[c]) for c in cat_ids]
    if model == data:
        return ClassMatch(cat_ids, "names-in-order", f"the model's {len(model)} class names match {data_label}'s "
                                                     f"categories, in order")
    by_name = {n: c for c, n in zip(cat_ids, data)}
    in_model, in_data = set(model), set(data)
    if in_model == in_data and len(in_model) == len(model) == len(data) == len(by_name):
        mapped = [by_name[n] for n in model]
        moved = [i for i, (c, d) in enumerate(zip(mapped, cat_ids)) if c != d]
        first = ", ".join(f"class {i} {model_names[keys[i]]!r} -> category {mapped[i]}"
                          for i in moved[:3])
        return ClassMatch(mapped, "by-name", f"the model's {len(model)} class names are {data_label}'s in another "
                                             f"order: matched by name ({len(moved)} moved; {first})")
    only_model = [(i, model_names[k]) for i, k in enumerate(keys) if model[i] not in in_data]
    only_data = [(c, data_names[c]) for c, n in zip(cat_ids, data) if n not in in_model]
    parts = []
    if only_model:
        parts.append("model classes not in the data: " + ", ".join(f"{i} {n!r}" for i, n in only_model[:3]))
    if only_data:
        parts.append("data categories not in the model: " + ", ".join(f"{c} {n!r}" for c, n in only_data[:3]))
    if not parts:  # same names, but one side repeats a name: no one-to-one match by name
        parts.append("a name repeats on one side, so names cannot be matched one to one")
    classes = "class" if n_model == 1 else "classes"
    categories = "category" if len(cat_ids) == 1 else "categories"
    raise AnnotationError(f"the model's class names do not match {data_label}: the model has {n_model} {classes}, "
                          f"the data {len(cat_ids)} {categories}; {'; '.join(parts)}. Evaluate the model on data "
                          f"labelled with its classes, or {_MAP_HINT}")
