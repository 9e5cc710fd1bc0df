"""Command-line flags generated from the settings dataclasses (``ntt_batch.method.config``).

A setting is declared once, as a dataclass field with its default and its help text (see
``config.setting``); the fields marked ``flag=True`` become click options here:

* the flag's name comes from the field's: ``points_per_side`` → ``--points-per-side``;
* its type from the annotation: ``int`` / ``float`` (``IntRange`` / ``FloatRange`` with the
  metadata's ``min``), ``str`` (``click.Choice`` with the metadata's ``choices``), ``Literal[...]``
  → ``click.Choice``, ``bool`` → an on/off flag (``--bf16``; ``--x/--no-x`` for a True default),
  ``int | None`` / ``float | None`` → the number, its default None;
* its default and help from the field, the default shown in ``--help`` (a None default as the
  metadata's ``default_text``, e.g. "off").

:func:`settings_from_flags` turns a command's keyword arguments back into the fields' values and
:func:`settings_given` keeps only the flags given on the command line (``run``: a flag overrides
the job file's value only when it is given).

Only the standard library and click are imported: ``ntt-batch --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import click

from ..method.config import settings_type_hints

__all__ = ["flag_fields", "flag_name", "flag_names", "settings_from_flags", "settings_given", "settings_options"]


def flag_fields(cls) -> tuple[dataclasses.Field, ...]:
    """The fields of settings class ``cls`` that are command-line flags, in declaration order."""
    return tuple(f for f in dataclasses.fields(cls) if f.metadata.get("flag"))


def flag_names(cls) -> tuple[str, ...]:
    """The names of ``cls``'s flag fields (also the keyword argument names of the commands)."""
    return tuple(f.name for f in flag_fields(cls))


def flag_name(field_name: str) -> str:
    """``points_per_side`` → ``--points-per-side``."""
    return "--" + field_name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(tp)):
            return args[0], True
    return tp, False


def _option(f: dataclasses.Field, tp: Any) -> Callable:
    """The click option of settings field ``f`` (annotation ``tp``, resolved)."""
    meta = f.metadata
    help_text = meta.get("help")
    if not help_text:
        raise TypeError(f"setting {f.name!r} is a flag but has no help text")
    if f.default is dataclasses.MISSING:
        raise TypeError(f"setting {f.name!r} is a flag but has no default")
    base, optional = _unwrap_optional(tp)
    decl = flag_name(f.name)
    kwargs: dict[str, Any] = {"default": f.default, "help": help_text, "show_default": True}
    if base is bool and not optional:
        if f.default:
            decl = f"{decl}/--no-{f.name.replace('_', '-')}"
        else:
            kwargs["is_flag"] = True
            kwargs["show_default"] = False  # an off flag: "[default: False]" teaches nothing
    elif typing.get_origin(base) is Literal and all(isinstance(a, str) for a in typing.get_args(base)):
        kwargs["type"] = click.Choice(list(typing.get_args(base)))
    elif base is str:
        choices = meta.get("choices")
        if f.default == "" and not choices:
            kwargs["default"] = None  # a required text setting: unset on the command line
        kwargs["type"] = click.Choice(list(choices)) if choices else str
    elif base is int:
        kwargs["type"] = click.IntRange(min=meta["min"]) if meta.get("min") is not None else int
    elif base is float:
        kwargs["type"] = click.FloatRange(min=meta["min"]) if meta.get("min") is not None else float
    else:
        raise TypeError(f"setting {f.name!r}: no command-line flag for the annotation {tp!r}")
    if "default_text" in meta:
        kwargs["show_default"] = meta["default_text"]
    elif f.default is None:
        kwargs["show_default"] = "unset"
    return click.option(decl, f.name, **kwargs)


def settings_options(cls, *, only: tuple[str, ...] | None = None) -> Callable:
    """A decorator adding a click option for each flag field of settings class ``cls`` (or of the
    fields named in ``only``), in declaration order."""
    hints = settings_type_hints(cls)
    fields = [f for f in flag_fields(cls) if only is None or f.name in only]
    options = [_option(f, hints[f.name]) for f in fields]

    def decorate(func: Callable) -> Callable:
        for opt in reversed(options):
            func = opt(func)
        return func

    return decorate


def settings_from_flags(cls, kw: dict[str, Any]) -> dict[str, Any]:
    """The flag fields' values found in a command's keyword arguments ``kw`` (missing ones left out:
    the dataclass default applies)."""
    return {name: kw[name] for name in flag_names(cls) if name in kw}


def settings_given(ctx: click.Context, cls, kw: dict[str, Any]) -> dict[str, Any]:
    """Like :func:`settings_from_flags`, only the flags given on the command line (not defaults)."""
    source = click.core.ParameterSource.COMMANDLINE
    return {
        name: value for name, value in settings_from_flags(cls, kw).items() if ctx.get_parameter_source(name) == source
    }
