"""The options of `python -m stream.run`, declared once.

Each option is a field of `stream.config.RunConfig` made with `option(...)`. The field
gives its name (the YAML key; the flag is `--` and the name with `-` for `_`), its type
and its default; the `Option` record in the field's metadata gives the rest: the words of
`--help` and of docs/cli.md, the choices, whether a model's shipped config sets it, whether
it names a path. From that one declaration come:

    parser(RunConfig, ...)       the flags (argparse, every default None so that a YAML
                                 config fills what a flag does not set)
    yaml_value(RunConfig, ...)   a config file's `key: value`: an unknown key or a value of
                                 the wrong type is one error line
    markdown(RunConfig)          docs/cli.md's tables of run options; tests/test_options.py
                                 fails when the file holds other ones, and
                                 `python -m stream.options --update docs/cli.md` rewrites them

No torch here: the parent process of stream.run reads its options without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.resources
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from stream.errors import ArgumentParser, UserError

#: The lines around the generated tables in docs/cli.md.
DOCS_BEGIN = (
    "<!-- run options: made by `python -m stream.options --update docs/cli.md` "
    "from stream/config.py's RunConfig; edit them there -->"
)
DOCS_END = "<!-- end of run options -->"
#: What --help and docs/cli.md say of a flag declared with `repeat=True`.
REPEAT = "repeat per stream"


@dataclasses.dataclass(frozen=True)
class Option:
    """One run option. `option()` fills the words; `options(cls)` the name, kind and
    default from the field it is declared on."""

    #: --help's words; `{default}` becomes "default X", or each model's value for an
    #: option the shipped configs set (per_model).
    help: str = ""
    #: docs/cli.md's words (markdown); `{choices}` becomes the choices, `{models}` the
    #: registered models.
    doc: str = ""
    #: docs/cli.md's default column; empty: the default (or each model's, or "off").
    doc_default: str = ""
    #: The flag: "" for `--name-with-dashes`, None for an option only a YAML file sets.
    flag: str | None = ""
    #: Whether a YAML file may set it (--config is a flag only).
    yaml: bool = True
    #: What a YAML value may be: empty for the field's type (int or float for a float).
    yaml_types: tuple[type, ...] = ()
    #: Whether a YAML null is taken: None for "when the field's type allows None".
    nullable: bool | None = None
    choices: tuple[str, ...] | None = None
    #: The shipped configs/<model>.yaml set it, so each model has its own default.
    per_model: bool = False
    #: It names a file, a folder or a device: the OS takes no NUL character in it.
    path: bool = False
    #: The flag may be given once per stream (argparse's append: the value is a list of
    #: what was given, in order); a YAML file sets the run's one value, and its `streams:`
    #: list each stream's.
    repeat: bool = False
    # Filled by options(cls) from the field:
    name: str = ""
    kind: type = str  # str, int, float, bool, list or dict
    default: Any = None


def option(
    default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **words: Any
) -> Any:
    """A RunConfig field that is a run option (see `Option` for `words`)."""
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={"option": Option(**words)}
    )


def _kind(annotation: Any) -> tuple[type, bool]:
    """(type, whether None is allowed) of a field's annotation: `float | None` -> (float, True)."""
    args = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    (kind,) = [a for a in args if a is not type(None)]
    return typing.get_origin(kind) or kind, type(None) in args


@functools.cache
def options(cls: type) -> tuple[Option, ...]:
    """The options declared on dataclass `cls`, in field order, each complete."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        o = f.metadata.get("option")
        if o is None:
            continue
        kind, nullable = _kind(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-") if o.flag == "" else o.flag
        out.append(
            dataclasses.replace(
                o,
                name=f.name,
                kind=kind,
                default=default,
                flag=flag,
                nullable=nullable if o.nullable is None else o.nullable,
                yaml_types=o.yaml_types or ((int, float) if kind is float else (kind,)),
            )
        )
    return tuple(out)


def path_options(cls: type) -> tuple[str, ...]:
    """Names of the options that name a file, a folder or a device."""
    return tuple(o.name for o in options(cls) if o.path)


def _shown(value: Any) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


@functools.cache
def model_defaults(name: str) -> dict[str, Any]:
    """{model: value} of option `name` in each shipped configs/<model>.yaml that sets it."""
    out: dict[str, Any] = {}
    for entry in sorted(importlib.resources.files("configs").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        data = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
        if isinstance(data, dict) and name in data:
            out[entry.name.removesuffix(".yaml")] = data[name]
    return out


def _by_model(o: Option) -> tuple[dict[str, str], list[str], str]:
    """Each shipped model's value of `o` (the built-in default where its config says none),
    the distinct values, and the most common one."""
    shown = {m: _shown(model_defaults(o.name).get(m, o.default)) for m in model_defaults("model")}
    values = sorted(set(shown.values())) or [_shown(o.default)]
    common = max(values, key=list(shown.values()).count)
    return shown, values, common


def _mostly(shown: dict[str, str], common: str) -> bool:
    return list(shown.values()).count(common) * 2 > len(shown)


def help_default(o: Option) -> str:
    """--help's default of `o`: one value, or which model's config says what."""
    if not o.per_model:
        return f"default {_shown(o.default)}"
    shown, values, common = _by_model(o)
    if len(values) == 1:
        return f"default {values[0]}"
    if _mostly(shown, common):
        rest = "; ".join(
            f"{v} for {', '.join(m for m in shown if shown[m] == v)}" for v in values if v != common
        )
        return f"default: the model's config: {rest}; {common} for the others"
    return "default: the model's config: " + ", ".join(f"{m} {v}" for m, v in shown.items())


def parser(cls: type, *, prog: str, description: str) -> argparse.ArgumentParser:
    """The argparse parser of the options of `cls` that have a flag. Every default is None
    (a switch too), so that a YAML config can fill what a flag does not set."""
    p = ArgumentParser(prog=prog, description=description)
    for o in options(cls):
        if o.flag is None:
            continue
        words = o.help.replace("{default}", help_default(o)) if "{default}" in o.help else o.help
        kwargs: dict[str, Any] = {"dest": o.name, "help": words}
        if o.repeat:
            kwargs["action"] = "append"
            kwargs["help"] = f"{words}; {REPEAT}"
        if o.kind is bool:
            kwargs["action"] = "store_false" if o.flag.startswith("--no-") else "store_true"
            kwargs["default"] = None
        else:
            if o.kind in (int, float):
                kwargs["type"] = o.kind
            if o.choices:
                kwargs["choices"] = o.choices
        p.add_argument(o.flag, **kwargs)
    return p


def load_yaml(path: str | Path, where: str) -> Any:
    """The YAML document of a file (a run config, an events file), or one UserError line
    naming it as `where`: missing, unreadable, or not valid YAML (with its line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where} cannot be read: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{where} is not valid YAML{at}: fix the syntax") from None


def yaml_options(cls: type) -> dict[str, Option]:
    """The options a YAML file may set, by key."""
    return {o.name: o for o in options(cls) if o.yaml}


def yaml_value(cls: type, where: str, key: object, value: object) -> tuple[str, Any]:
    """(name, value) of `key: value` in a config file (`where` names it in the error): a
    key with `-` for `_` is taken, a YAML number where a string is expected (camera: 0)
    becomes one. UserError for an unknown key or a value of the wrong type."""
    name = str(key).replace("-", "_")
    known = yaml_options(cls)
    o = known.get(name)
    if o is None:
        raise UserError(f"{where}: unknown key {key!r} (known keys: {', '.join(sorted(known))})")
    return name, typed(o, where, key, value)


def typed(o: Option, where: str, key: object, value: object) -> Any:
    """`value` of a YAML `key` that sets option `o` (a number where a string is expected
    becomes one); UserError naming `where` and `key` for a value of the wrong type."""
    if value is None and o.nullable:
        return None
    if isinstance(value, bool) and bool not in o.yaml_types or not isinstance(value, o.yaml_types):
        expected = " or ".join(t.__name__ for t in o.yaml_types)
        raise UserError(f"{where}: {key} must be {expected}, got {type(value).__name__} {value!r}")
    return str(value) if o.kind is str else value


# -- docs/cli.md -------------------------------------------------------------------------


def _doc(o: Option) -> str:
    text = o.doc
    if "{choices}" in text:
        text = text.replace("{choices}", ", ".join(f"`{c}`" for c in o.choices or ()))
    if "{models}" in text:
        import models  # the registry is the list's one truth; only the docs need torch here

        text = text.replace("{models}", ", ".join(f"`{m}`" for m in models.available()))
    return text


def _doc_default(o: Option) -> str:
    if o.doc_default:
        return o.doc_default
    if o.kind is bool:
        return "off"
    if o.per_model:
        shown, values, common = _by_model(o)
        if len(values) == 1:
            return f"`{values[0]}`"
        if not _mostly(shown, common):
            return "from the config"
        rest = ", ".join(
            f"`{v}` for " + ", ".join(f"`{m}`" for m in shown if shown[m] == v)
            for v in values
            if v != common
        )
        return f"from the config: {rest}, `{common}` for the others"
    if o.default is None:
        raise ValueError(f"option {o.name}: say in doc_default what no value means")
    return f"`{_shown(o.default)}`"


def markdown(cls: type) -> str:
    """docs/cli.md's tables of the options of `cls`: the flags, then the YAML-only keys."""
    flags = ["| flag | default | meaning |", "|---|---|---|"]
    keys = ["| key | meaning |", "|---|---|"]
    for o in options(cls):
        if not o.doc:
            raise ValueError(f"option {o.name} has no doc: docs/cli.md would not explain it")
        if o.flag is None:
            keys.append(f"| `{o.name}` | {_doc(o)} |")
        else:
            flag = f"`{o.flag}` ({REPEAT})" if o.repeat else f"`{o.flag}`"
            flags.append(f"| {flag} | {_doc_default(o)} | {_doc(o)} |")
    return "\n".join(flags + ["", "Keys that only a YAML file sets:", ""] + keys) + "\n"


def docs_section(text: str) -> str:
    """The generated part of docs/cli.md's text, between DOCS_BEGIN and DOCS_END."""
    begin, end = text.index(DOCS_BEGIN) + len(DOCS_BEGIN), text.index(DOCS_END)
    return text[begin:end].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    from stream.config import RunConfig  # stream.config declares its fields with option()

    p = ArgumentParser(
        prog="python -m stream.options",
        description="Print or rewrite docs/cli.md's tables of the options of python -m stream.run.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--markdown", action="store_true", help="print the tables")
    what.add_argument("--update", metavar="FILE", help="rewrite the tables in FILE (docs/cli.md)")
    args = p.parse_args(argv)
    tables = markdown(RunConfig)
    if args.markdown:
        sys.stdout.write(tables)
        return 0
    path = Path(args.update)
    text = path.read_text(encoding="utf-8")
    if DOCS_BEGIN not in text or DOCS_END not in text:
        print(f"error: {path} has no {DOCS_BEGIN} ... {DOCS_END} lines", file=sys.stderr)
        return 2
    head, rest = text.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    path.write_text(f"{head}{DOCS_BEGIN}\n\n{tables}\n{DOCS_END}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
