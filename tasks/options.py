"""The command line, derived from `RunConfig`: the settings a user sets for a run are options of their
own (`PRIMARY`: model and data, calibration, targets and accuracy, where and how it runs), their help
the field's description; every other setting (each target's tuning, evaluation details, auto mode's
limits) is reached with `--set KEY=VALUE`, KEY its dotted path in RunConfig (`ort_cpu.reduce_range`),
parsed like an option of its type would be. `--help-all` lists them all. A new setting therefore
reaches the command line by being added to the model, and cannot land in the wrong section.

Names of the options: `--field-name` (`_RENAMED` keeps a few shorter ones); `--no-gate` is a switch
that sets the gate "off" (`_SWITCHES`). An option of an older release that is now a `--set` key, or
that was removed, is refused with the way to say it now."""

from __future__ import annotations

import argparse
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

# The options --help shows, by group, in order: what a user sets for a run.
PRIMARY: dict[str, tuple[str, ...]] = {
    "model and data": ("model", "demo", "eval.imgsz", "data", "split", "images", "annotations", "subset"),
    "calibration": ("calib_images", "calib", "calib_count"),
    "targets and accuracy": ("targets", "quant.method", "quant.exclude_nodes", "quant.exclude_op_types",
                             "accuracy_budget", "max_map_drop", "reconstruction.mode"),
    "where and how it runs": ("runner", "workers", "run_root", "run_id", "cache_dir"),
}
# Options of earlier releases that left the product with the experiment behind them: where its figure
# stands now. Refused with that pointer rather than argparse's bare "unrecognized arguments".
REMOVED: dict[str, str] = {
    "--ort-silu-floor": "not confirmed on 300 images (docs/accuracy.md, 'Where YOLOv5n falls short')",
    "--float-nsr-above": "not confirmed on 300 images (docs/accuracy.md, 'What each recovery rule is worth')",
    "--bias-correction": "not confirmed on 300 images; on openvino auto mode tries it (docs/accuracy.md)",
    "--no-bias-correction": "bias correction is no longer an option (docs/accuracy.md)",
    "--entropy-impl": "ModelOpt's own entropy calibrator was ~100x slower than max (docs/accuracy.md)",
    "--ort-calib-merge-every": "an internal bound on calibration memory now (8 samples)",
    "--openvino-full-bias-correction": "bias correction is auto mode's openvino candidate (docs/accuracy.md)",
    "--openvino-float-rules": "not confirmed (docs/accuracy.md, 'What each recovery rule is worth')",
    "--ort-stem-float": "measured not worth it (docs/targets.md)",
    "--head-preset": "recovery.head_float keeps the head in float within a MAC budget (docs/accuracy.md)",
    "--ort-head-preset": "recovery.head_float keeps the head in float within a MAC budget (docs/accuracy.md)",
    "--quantize-topk": "TopK is always kept in float: Q/DQ there coarsens the output scores (docs/targets.md)",
}
# Section (dotted path from RunConfig) -> flag prefix (the names older releases gave every setting,
# still recognised to point at --set).
SECTION_PREFIX: dict[str, str] = {"": "", "quant": "", "recovery": "", "eval": "", "eval.preprocess": "",
                                  "ort_cpu": "ort-", "openvino": "openvino-",
                                  "reconstruction": "reconstruction-"}
# Dotted field path -> flag, where the derived name would read worse than the established one.
_RENAMED: dict[str, str] = {"targets": "--target", "ort_cpu.calibrate_method": "--ort-calibration",
                            "reconstruction.mode": "--reconstruct"}
# Lists whose items may themselves hold commas (regexes): one item per word, no comma splitting.
_NO_COMMA_SPLIT = {"quant.exclude_nodes"}
# Switches: flag -> (dotted path, value, help).
_SWITCHES: dict[str, tuple[str, Any, str]] = {
    "--no-gate": ("max_map_drop", None, "disable the regression gate (same as --max-map-drop off)"),
}
_TRUE, _FALSE = {"on", "true", "yes", "1"}, {"off", "false", "no", "0"}
_OFF = {"none", "off", "null"}
SET_DEST = "set_"


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


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE | _FALSE:
        return t in _TRUE
    raise ValueError(f"{text!r} is not on or off")


def setting_parser(model: type[BaseModel]) -> Callable[[str], tuple[str, Any]]:
    """The `--set KEY=VALUE` converter: KEY a dotted path of `model`, VALUE read as that field's own
    option would read it (comma lists, `off` for none, `target=X,...` maps, on/off switches)."""
    fields = dict(leaf_fields(model))

    def parse(text: str) -> tuple[str, Any]:
        key, sep, value = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. ort_cpu.reduce_range=off)")
        if key not in fields:
            near = [k for k in fields if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]] or \
                difflib.get_close_matches(key, list(fields), n=2)
            hint = f"; did you mean {' or '.join(near)}?" if near else "; --help-all lists every setting"
            raise argparse.ArgumentTypeError(f"no setting {key!r}{hint}")
        info = fields[key]
        if unwrap_optional(info.annotation)[0] is bool:
            conv: Callable[[str], Any] = _parse_bool
        else:
            conv = _converter(key, info)["type"]
        try:
            return key, conv(value)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"{key}={value}: {e}") from e

    return parse


def settings_listing(model: type[BaseModel]) -> str:
    """Every setting as `--set` takes it, by section, with its default and description (--help-all)."""
    lines = ["Every setting, as --set KEY=VALUE takes it (YAML files and Prefect parameters use the same keys, "
             "nested by section):"]
    last = None
    for path, info in leaf_fields(model):
        section = path.rpartition(".")[0] or "run"
        if section != last:
            lines += ["", f"{section}:"]
            last = section
        kw = _converter(path, info)
        choices = kw.get("choices")
        meta = "on|off" if kw.get("action") else "|".join(choices) if choices else kw.get("metavar", "VALUE")
        lines.append(f"  {path}={meta}")
        lines.append(f"      {_help(info, kw).replace('%%', '%')}")
    return "\n".join(lines) + "\n"


class OneLineErrors(argparse.ArgumentParser):
    """A usage error is one line, like every other refusal of the command (exit 2), and names --help."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} ({self.prog} --help)\n")


class _HelpAll(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, model: type[BaseModel], **kw: Any) -> None:
        self.model = model
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *a: Any) -> None:
        print(settings_listing(self.model), end="")
        parser.exit(0)


def add_config_options(ap: argparse.ArgumentParser, model: type[BaseModel],
                       primary: dict[str, tuple[str, ...]] = PRIMARY) -> dict[str, str]:
    """Add the `primary` settings of `model` as options (grouped), `--set KEY=VALUE` for every other
    one and `--help-all`; returns {dest: dotted path}."""
    dests: dict[str, str] = {}
    fields = dict(leaf_fields(model))
    for title, paths in primary.items():
        group = ap.add_argument_group(title)
        for path in paths:
            info = fields[path]
            kw = _converter(path, info)
            help_text = _help(info, kw)
            kw.pop("_list", None)
            dest = path.replace(".", "__")
            group.add_argument(flag_of(path), dest=dest, help=help_text, **kw)
            dests[dest] = path
            for flag, (spath, value, shelp) in _SWITCHES.items():
                if spath == path:
                    group.add_argument(flag, dest=dest, action="store_const", const=value, help=shelp)
    more = ap.add_argument_group("every other setting")
    more.add_argument("--set", dest=SET_DEST, action="append", type=setting_parser(model), metavar="KEY=VALUE",
                      help="any other setting, by its dotted path: each target's tuning (ort_cpu.reduce_range=off, "
                           "openvino.preset=performance), evaluation (eval.providers=cpu, eval.conf_thres=0.01), "
                           "auto mode's limits (guard_max_exclusions=8); repeat for several; --help-all lists them, "
                           "docs/settings.md explains them")
    more.add_argument("--help-all", action=_HelpAll, model=model, help="list every setting --set takes, and exit")
    return dests


def unknown_option_message(token: str, model: type[BaseModel]) -> str | None:
    """For an option this command no longer has: how to say it now (a --set key, or why it left)."""
    flag = token.split("=", 1)[0]
    if flag in REMOVED:
        return f"option {flag} was removed: {REMOVED[flag]}"
    for path, info in leaf_fields(model):
        f = flag_of(path)
        if flag == f or (unwrap_optional(info.annotation)[0] is bool and flag == "--no-" + f[2:]):
            value = ("off" if flag.startswith("--no-") else "on") if unwrap_optional(info.annotation)[0] is bool \
                else "VALUE"
            return f"option {flag} is now --set {path}={value} (--help-all lists every setting)"
    return None


def nest(values: dict[str, Any], dests: dict[str, str]) -> dict[str, Any]:
    """{dest: value} of the options given -> nested settings dict for RunConfig.

    A list option given several times (`--exclude-nodes a --exclude-nodes b`) keeps the last; words
    after one flag are joined into one list."""
    out: dict[str, Any] = {}
    pairs = [(dests.get(dest), v) for dest, v in values.items() if dest != SET_DEST]
    pairs += list(values.get(SET_DEST) or [])  # --set after the options: the more specific word wins
    for path, v in pairs:
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
