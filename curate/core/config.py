"""Config dataclasses that declare each setting once: ``setting()`` fields and their checks.

A job's config (``TrainConfig``, ``AuditConfig``, ``SampleConfig``, ``RankConfig``, the dedup
steps) is a frozen dataclass whose fields carry, in ``field(metadata=...)``, their help text and,
where they have one, their range or metavar. The CLI builds its options from these fields
(``curate.cli.options``), a recipe step inherits them, and :func:`field_problems` checks values
against them; no other place lists them. Problems are named by config key (``sigma_n: must be
>= 0``), as a recipe writes them; the CLI turns keys into flags.

Metadata keys: ``help`` (required), ``metavar``, ``min`` / ``max`` (inclusive bounds of a number),
``min_open`` / ``max_open`` (that bound is excluded), ``folder`` (a folder path: the CLI checks it
is not a file), ``exists`` (the path must exist), ``multiple`` (a ``tuple[str, ...]`` given as a
repeatable option), ``comma`` (a ``tuple[str, ...]`` given as one comma-separated value).

Standard library only: the CLI imports the configs to build ``--help``.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
import typing
from dataclasses import field
from typing import Any, Literal


def setting(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its help text and CLI metadata (see the module docstring)."""
    if isinstance(default, list | dict | set):
        raise TypeError("setting(): give a mutable default as a tuple")
    return field(default=default, metadata={"help": help, **meta})


def setting_keys(cls: type) -> tuple[str, ...]:
    """The keys of config dataclass ``cls``: its init fields, in order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def config_values(obj: Any, cls: type) -> dict[str, Any]:
    """The values of ``obj``'s fields that config ``cls`` declares (a step's config part)."""
    return {k: getattr(obj, k) for k in setting_keys(cls)}


def field_problems(obj: Any, only: typing.Iterable[str] | None = None) -> list[str]:
    """Problems with a config dataclass's values against its fields' types and metadata bounds:
    a ``Literal`` value outside its choices, a number of the wrong kind or out of ``min``/``max``
    (``only``: just these fields). A union of ``Literal`` choices and a number (``int |
    Literal["auto"]``) takes either.
    """
    hints = typing.get_type_hints(type(obj))
    keep = None if only is None else set(only)
    out = []
    for f in dataclasses.fields(obj):
        if keep is not None and f.name not in keep:
            continue
        value = getattr(obj, f.name)
        tp, optional = unwrap_optional(hints[f.name])
        if value is None:
            if not optional:
                out.append(f"{f.name}: required")
            continue
        choices, number = literal_or_number(tp)
        if choices and value in choices and not isinstance(value, bool):
            continue
        if number is None:
            if choices:
                out.append(
                    f"{f.name}: must be one of {', '.join(map(str, choices))}, got {value!r}"
                )
            continue
        kinds = (int,) if number is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            what = "an integer" if number is int else "a number"
            either = f"{' or '.join(map(repr, choices))} or " if choices else ""
            out.append(f"{f.name}: must be {either}{what}, got {value!r}")
            continue
        out.extend(_bound_problems(f, value))
    return out


def _bound_problems(f: dataclasses.Field, value: float) -> list[str]:
    meta, out = f.metadata, []
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value <= lo if meta.get("min_open") else value < lo):
        out.append(f"{f.name}: must be {'>' if meta.get('min_open') else '>='} {lo}, got {value!r}")
    if hi is not None and (value >= hi if meta.get("max_open") else value > hi):
        out.append(f"{f.name}: must be {'<' if meta.get('max_open') else '<='} {hi}, got {value!r}")
    return out


def literal_or_number(tp: Any) -> tuple[tuple[Any, ...], type | None]:
    """``(Literal choices, int | float | None)`` of a field type: ``Literal["a", "b"]`` ->
    ``(("a", "b"), None)``, ``int`` -> ``((), int)``, ``float | Literal["auto"]`` ->
    ``(("auto",), float)``; ``((), None)`` for anything else."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp), None
    if tp in (int, float):
        return (), tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        choices: list[Any] = []
        numbers = []
        for arg in typing.get_args(tp):
            if typing.get_origin(arg) is Literal:
                choices += typing.get_args(arg)
            elif arg in (int, float):
                numbers.append(arg)
            else:
                return (), None
        if len(numbers) == 1:
            return tuple(choices), numbers[0]
    return (), None


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, ``(tp, False)`` otherwise (``X`` itself a union when
    more than one type is left)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        all_args = typing.get_args(tp)
        args = [a for a in all_args if a is not type(None)]
        if len(args) < len(all_args):
            return (args[0] if len(args) == 1 else functools.reduce(operator.or_, args)), True
    return tp, False
