"""The command line, derived from `RunConfig`: every field is an option, its help is the field's
description, and its value lands in the field's own section. A new setting therefore reaches the
command line by being added to the model, and cannot land in the wrong section.

Names: `--field-name` for the run and for the quant, recovery and eval sections (their names are unique
across them); `--ort-field-name` for the ort_cpu section. A few options keep shorter or older names
(`_RENAMED`) and two are switches that set a field to "off" (`_SWITCHES`)."""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

# Section (dotted path from RunConfig) -> flag prefix.
SECTION_PREFIX: dict[str, str] = {"": "", "quant": "", "recovery": "", "eval": "", "eval.preprocess": "",
                                  "ort_cpu": "ort-", "openvino": "openvino-"}
# Dotted field path -> flag, where the derived name would read worse than the established one.
_RENAMED: dict[str, str] = {"targets": "--target", "ort_cpu.calibrate_method": "--ort-calibration"}
# Lists whose items may themselves hold commas (regexes): one item per word, no comma splitting.
_NO_COMMA_SPLIT = {"quant.exclude_nodes"}
# Switches: flag -> (dotted path, value, help).
_SWITCHES: dict[str, tuple[str, Any, str]] = {
    "--no-gate": ("max_map_drop", None, "disable the regression gate (same as --max-map-drop off)"),
    "--no-bias-correction": ("recovery.bias_correction", [], "no fast bias correction on any target (the default "
                                                             "now; kept so existing commands still parse)"),
}
_OFF = {"none", "off", "null"}


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar(tp: Any) -> tuple[Any, list[str] | None]:
    """(converter, choices) for one value of type tp."""
    if get_origin(tp) is Literal:
        return str, [str(a) for a in get_args(tp)]
    if tp in (int, float, str):
        return tp, None
    if tp is Path:
        return str, None
    raise TypeError(f"no command-line form for type {tp!r}; extend tasks/options.py")


def _default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        d = info.default_factory()  # type: ignore[call-arg]
    else:
        d = info.default
    if isinstance(d, BaseModel):
        return ""
    if d is None or "default" in (info.description or ""):
        return ""  # none, or the description says what it is
    if isinstance(d, bool):
        return "on" if d else "off"
    if isinstance(d, list):
        return ",".join(map(str, d)) or "none"
    if isinstance(d, dict):
        return ",".join(f"{k}={v}" for k, v in d.items())
    return str(d)


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """(dotted path, field) of every setting, sections flattened."""
    out: list[tuple[str, FieldInfo]] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        tp, _ = unwrap_optional(info.annotation)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out += leaf_fields(tp, f"{path}.")
        else:
            out.append((path, info))
    return out


def flag_of(path: str) -> str:
    if path in _RENAMED:
        return _RENAMED[path]
    section, _, name = path.rpartition(".")
    return "--" + SECTION_PREFIX[section] + name.replace("_", "-")


def _metavar(tp: Any, choices: list[str] | None) -> str:
    if choices:
        return "|".join(choices)
    return {int: "N", float: "X", Path: "PATH"}.get(tp, "TEXT")


def _converter(path: str, info: FieldInfo) -> dict[str, Any]:
    """argparse keyword arguments for one field."""
    tp, optional = unwrap_optional(info.annotation)
    origin = get_origin(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list:
        (item,) = get_args(tp)
        conv, choices = _scalar(item)
        split = path not in _NO_COMMA_SPLIT

        def parse_list(text: str) -> Any:
            if optional and text.lower() in _OFF:
                return None
            parts = [p.strip() for p in (text.split(",") if split else [text]) if p.strip()]
            return [conv(p) for p in parts]

        return {"type": parse_list, "nargs": "+", "metavar": _metavar(item, choices), "_list": split}
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        _, keys = _scalar(key_tp)

        def parse_map(text: str) -> Any:
            if "=" not in text:
                return float(text) if val_tp is float else text  # one value for every key
            pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
            return {k.strip(): (val_tp(v) if val_tp in (int, float) else v) for k, v in pairs}

        return {"type": parse_map, "metavar": f"X|{'|'.join(keys or ['KEY'])}=X,..."}
    conv, choices = _scalar(tp)
    if optional:
        def parse_opt(text: str) -> Any:
            return None if text.lower() in _OFF else conv(text)

        return {"type": parse_opt, "metavar": _metavar(tp, choices) + "|off"}
    kw: dict[str, Any] = {"type": conv, "metavar": _metavar(tp, choices)}
    if choices:
        kw["choices"] = choices
    return kw


def _help(info: FieldInfo, kw: dict[str, Any]) -> str:
    text = (info.description or "").strip()
    default = _default_text(info)
    if default:
        text = f"{text} (default {default})" if text else f"default {default}"
    if kw.get("_list"):
        text += "; comma-separated or separate words"
    return text.replace("%", "%%")


def add_config_options(ap: argparse.ArgumentParser, model: type[BaseModel]) -> dict[str, str]:
    """Add an option for every field of `model` (grouped by section); returns {dest: dotted path}."""
    dests: dict[str, str] = {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    seen: dict[str, str] = {}
    for path, info in leaf_fields(model):
        section = path.rpartition(".")[0]
        if section not in SECTION_PREFIX:
            raise TypeError(f"section {section!r} of setting {path} has no flag prefix; add it to SECTION_PREFIX")
        flag = flag_of(path)
        if flag in seen:
            raise TypeError(f"settings {seen[flag]} and {path} both map to {flag}; give one a prefix")
        seen[flag] = path
        if section not in groups:
            doc = _section_doc(model, section)
            groups[section] = ap.add_argument_group(f"{section or 'run'} settings", doc)
        kw = _converter(path, info)
        help_text = _help(info, kw)
        kw.pop("_list", None)
        dest = path.replace(".", "__")
        groups[section].add_argument(flag, dest=dest, help=help_text, **kw)
        dests[dest] = path
    for flag, (path, value, help_text) in _SWITCHES.items():
        dest = path.replace(".", "__")
        groups[path.rpartition(".")[0]].add_argument(flag, dest=dest, action="store_const", const=value,
                                                     help=help_text)
    return dests


def _section_doc(model: type[BaseModel], section: str) -> str | None:
    m: Any = model
    for part in filter(None, section.split(".")):
        m, _ = unwrap_optional(m.model_fields[part].annotation)
    doc = (m.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(doc.split()) or None


def nest(values: dict[str, Any], dests: dict[str, str]) -> dict[str, Any]:
    """{dest: value} of the options given -> nested settings dict for RunConfig.

    A list option given several times (`--exclude-nodes a --exclude-nodes b`) keeps the last; words
    after one flag are joined into one list."""
    out: dict[str, Any] = {}
    for dest, v in values.items():
        path = dests.get(dest)
        if path is None:
            continue
        if isinstance(v, list) and v and any(x is None for x in v):
            v = None  # --class-map off
        elif isinstance(v, list) and v and all(isinstance(x, list) for x in v):
            v = [y for x in v for y in x]
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out
