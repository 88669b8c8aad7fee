"""Click options built from a config dataclass, and the one table from config keys to flags.

A library config (e.g. ``curate.train.config.TrainConfig``) declares each setting once: its type,
default and, in ``field(metadata=...)``, its ``help`` text and optionally ``metavar``, ``min``,
``max`` and ``max_open``. :func:`config_options` turns the fields into options, one per field,
named after the field, so the command body gets the settings as keyword arguments and builds
the config with :func:`pop_config`.

The library names config keys in its messages (``sigma_n_column: ...``, as a recipe would); a
command translates them into flags with :func:`keys_to_flags`, through :data:`FLAGS`.

Only click (and the standard library) is imported here: ``curate --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal

import click

from curate.core.config import literal_or_number, unwrap_optional

# The flag of every key whose flag is not ``--`` + the key with ``_`` written as ``-``.
FLAGS: dict[str, str] = {
    "out_dir": "--out",
    "train_dir": "--train",  # audit: the run folder the model was trained on
    "k": "--nl2-k",  # audit: normalised L2's neighbours (AMG's own is --amg-k)
    "alpha": "--nl2-alpha",
    "prompts": "--prompt",  # sample: repeatable, one prompt each
}


def flag(key: str, prefix: str = "") -> str:
    """The command-line flag of a config key: ``sigma_n`` -> ``--sigma-n``, see :data:`FLAGS`;
    with a ``prefix`` (the options of a nested config, e.g. ``amg_``) ``--`` + prefix + key
    (``k`` -> ``--amg-k``)."""
    if prefix:
        return "--" + (prefix + key).replace("_", "-")
    return FLAGS.get(key) or "--" + key.replace("_", "-")


def config_keys(cls: type, *extra: str) -> tuple[str, ...]:
    """The keys of dataclass ``cls`` (its init fields) plus ``extra`` (a job's own arguments)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init) + extra


_KEYS = re.compile(r"(?<![\w.\-`/])([a-z][a-z0-9_]*(?:/[a-z][a-z0-9_]*)*)(?![\w\-/])(: true\b|:)?")
_VALUE_THEN_PROBLEM = re.compile(r" \S+?: ")  # after a leading "key:": one value, then the problem


def keys_to_flags(message: str, keys: Iterable[str], prefix: str = "") -> str:
    """Rewrite the config keys named in a library message into flags, through :func:`flag`.

    The library writes keys as a recipe does, and a key (or ``key/key`` pair) is rewritten where
    the message is about it (``key: ...`` at the start keeps its colon, ``key: VALUE: ...``
    there names the value given: ``--flag VALUE: ...``), where it is set to a value
    (``key: value`` -> ``--flag value``, ``key: true`` -> ``--flag``), and anywhere when
    it is a compound name, which is never an English word (``model`` in "the model's size"
    stays a word, ``sigma_n`` becomes ``--sigma-n``)::

        sigma_n_column/noisy_only_column: need objective: ambient
        --sigma-n-column/--noisy-only-column: need --objective ambient

    ``prefix``: the keys are a nested config's, whose flags carry it (:func:`flag`).
    """
    known = set(keys)

    def sub(m: re.Match) -> str:
        parts, suffix = m[1].split("/"), m[2] or ""
        if not all(p in known for p in parts):
            return m[0]
        flags = "/".join(flag(p, prefix) for p in parts)
        if suffix == ":":  # at the start, "key: VALUE: problem" reads "--flag VALUE: problem"
            lead = m.start() == 0 and not _VALUE_THEN_PROBLEM.match(message, m.end())
            return flags + (":" if lead else "")
        if suffix:  # ": true"
            return flags
        return flags if len(parts) > 1 or "_" in m[1] else m[0]

    return _KEYS.sub(sub, message)


def errors_as_flags(keys: Iterable[str] | Callable[[], Iterable[str]]) -> Callable:
    """Decorator for a command body: a ``CurateError``'s message gets its keys as flags
    (``keys``: the keys, or a function returning them, called when an error is raised)."""
    from curate.errors import CurateError

    if not callable(keys):
        keys = tuple(keys)

    def wrap(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except CurateError as err:
                known = keys() if callable(keys) else keys
                err.args = (keys_to_flags(str(err), known), *err.args[1:])
                raise

        return wrapper

    return wrap


def config_options(
    cls: type,
    *,
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    prefix: str = "",
) -> Callable:
    """Decorator adding one Click option per field of dataclass ``cls`` (in field order).

    The option's parameter is the field's name, its flag :func:`flag` of it, its help the
    field's ``metadata["help"]`` (keys rewritten as flags). Types: ``Literal[...]`` -> a choice
    (non-string choices converted back), ``int``/``float`` -> a number, a range when the
    metadata has ``min``/``max``, ``int | Literal["auto"]`` -> either, ``bool`` -> an on/off
    flag pair, ``tuple[str, ...]`` -> a repeatable option (``multiple``) or a comma list
    (``comma``), ``X | None`` -> X with the default None; ``folder`` / ``exists`` make a path.
    ``only`` keeps just those fields; ``overrides`` replaces Click keywords of a field's option
    (e.g. a command-specific default). ``prefix`` (e.g. ``amg_``) names the options of a
    config nested in a command's: parameter ``amg_k``, flag ``--amg-k`` (:func:`flag`); build
    the config with ``pop_config(cls, params, prefix)``. ``tuple[float, ...]`` fields (optionally
    ``| Literal[...]`` words) take one comma-separated value.
    """
    skip = set(exclude)
    keep = None if only is None else set(only)
    hints = typing.get_type_hints(cls)
    keys = config_keys(cls)
    fields = [
        f
        for f in dataclasses.fields(cls)
        if f.init and f.name not in skip and (keep is None or f.name in keep)
    ]
    over = overrides or {}
    options = [_option(f, hints[f.name], keys, over.get(f.name, {}), prefix) for f in fields]

    def decorate(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorate


class ChoiceOrNumber(click.ParamType):
    """One of some words (``auto``) or a number (``int`` or ``float``) in a range."""

    def __init__(self, choices, kind: type, lo=None, hi=None, lo_open=False, hi_open=False):
        self.choices, self.kind = tuple(choices), kind
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.name = "|".join([*map(str, self.choices), kind.__name__])

    def get_metavar(self, *args, **kwargs) -> str:
        return self.name

    def convert(self, value, param, ctx):
        if value in self.choices or (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            return value
        try:
            v = self.kind(value)
        except (TypeError, ValueError):
            words = " nor ".join(repr(c) for c in self.choices)
            self.fail(f"{value!r} is neither {words} nor a number", param, ctx)
        lo_bad = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        hi_bad = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
        if lo_bad or hi_bad:
            left = "(" if self.lo_open else "["
            right = ")" if self.hi_open else "]"
            self.fail(f"{v} is not in {left}{self.lo}, {self.hi}{right}", param, ctx)
        return v


def comma_list(value: str | tuple | None) -> tuple[str, ...] | None:
    """``"a, b"`` -> ``("a", "b")``; ``none`` or an empty string -> ``()``."""
    if value is None or isinstance(value, tuple):
        return value
    parts = tuple(p.strip() for p in str(value).split(",") if p.strip())
    return () if parts in (("none",), ()) else parts


class LazyOptionsCommand(click.Command):
    """A command whose options from configs are built when it is used (``--help`` or a call),
    not when its module is imported: for configs whose module loads heavy libraries (the
    dedup steps import numpy and polars), which ``curate --help`` must not.

    ``lazy_options``: a function returning option decorators (``config_options(...)``, ...),
    added after the command's own parameters.
    """

    def __init__(self, *args, lazy_options: Callable[[], list[Callable]], **kwargs):
        self._lazy_options, self._built = lazy_options, None
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._built is None:

            def holder():
                pass

            for decorate in reversed(self._lazy_options()):
                holder = decorate(holder)
            extra = list(reversed(getattr(holder, "__click_params__", [])))
            self._built = [*self._own, *extra]
        return self._built

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._own, self._built = list(value), None


def pop_config(cls: type, params: dict[str, Any], prefix: str = ""):
    """Build ``cls`` from the command's keyword arguments, removing its fields from ``params``
    (``prefix``: the options were built with it, :func:`config_options`)."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    return cls(**{n: params.pop(prefix + n) for n in names if prefix + n in params})


def _float_tuple(tp: Any) -> tuple[int | None, tuple[Any, ...]] | None:
    """``(length or None for any, Literal words)`` of ``tuple[float, ...]``-like field types
    (``tuple[float, float] | Literal["auto"]``), else None."""
    args = (
        typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    )
    words: list[Any] = []
    length: int | None = -1
    for arg in args:
        if typing.get_origin(arg) is Literal:
            words += typing.get_args(arg)
        elif typing.get_origin(arg) is tuple and length == -1:
            inner = typing.get_args(arg)
            if inner[-1:] == (Ellipsis,) and inner[0] is float:
                length = None
            elif inner and all(t is float for t in inner):
                length = len(inner)
            else:
                return None
        else:
            return None
    return None if length == -1 else (length, tuple(words))


def _parse_floats(length: int | None, words: tuple[Any, ...]) -> Callable:
    def parse(_ctx, param, value):
        if value is None or value in words or isinstance(value, tuple):
            return value
        try:
            out = tuple(float(v) for v in str(value).split(","))
        except ValueError:
            out = ()
        if not out or (length is not None and len(out) != length):
            want = f"{length} comma-separated numbers" if length else "comma-separated numbers"
            either = "".join(f"{w}, " for w in words)
            raise click.BadParameter(f"{value!r}: expected {either}{want}", param=param)
        return out

    return parse


def _option(
    f: dataclasses.Field,
    tp: Any,
    keys: tuple[str, ...],
    override: dict[str, Any],
    prefix: str = "",
) -> Callable:
    meta = f.metadata
    if "help" not in meta:
        raise TypeError(f"{f.name}: give the field a help text, field(metadata={{'help': ...}})")
    tp, _ = unwrap_optional(tp)
    default = f.default if f.default is not dataclasses.MISSING else None
    kwargs: dict[str, Any] = {
        "help": keys_to_flags(meta["help"], keys, prefix),
        "default": default,
        "show_default": default is not None,
    }
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    decls = [flag(f.name, prefix)]
    floats = _float_tuple(tp)
    if floats is not None:
        kwargs.update(type=str, callback=_parse_floats(*floats))
        if isinstance(default, tuple):
            kwargs["default"] = ",".join(f"{v:g}" for v in default)
        kwargs.update(override)
        return click.option(*decls, prefix + f.name, **kwargs)
    choices, number = literal_or_number(tp)
    lo, hi = meta.get("min"), meta.get("max")
    ranged = dict(min_open=bool(meta.get("min_open")), max_open=bool(meta.get("max_open")))
    if choices and number is not None:
        kwargs["type"] = ChoiceOrNumber(
            choices, number, lo, hi, ranged["min_open"], ranged["max_open"]
        )
    elif choices:
        by_text = {str(c): c for c in choices}
        kwargs["type"] = click.Choice(list(by_text))
        if default is not None:
            kwargs["default"] = str(default)
        if not all(isinstance(c, str) for c in choices):
            kwargs["callback"] = lambda _ctx, _param, v: None if v is None else by_text[v]
    elif tp is bool:
        decls = [f"{flag(f.name, prefix)}/--no-{flag(f.name, prefix)[2:]}"]
        kwargs["show_default"] = bool(default)
    elif number is not None:
        if lo is None and hi is None:
            kwargs["type"] = number
        elif number is int:
            kwargs["type"] = click.IntRange(lo, hi, **ranged)
        else:
            kwargs["type"] = click.FloatRange(lo, hi, **ranged)
    elif tp is str and (meta.get("folder") or meta.get("exists")):
        kwargs["type"] = click.Path(
            exists=bool(meta.get("exists")), file_okay=not meta.get("folder"), dir_okay=True
        )
    elif tp is str:
        kwargs["type"] = str
    elif typing.get_origin(tp) is tuple and typing.get_args(tp) == (str, ...):
        if meta.get("multiple"):
            kwargs.update(multiple=True, default=default or (), show_default=bool(default))
        elif meta.get("comma"):
            kwargs["default"] = None if default is None else ",".join(default) or "none"
            kwargs["callback"] = lambda _ctx, _param, v: comma_list(v)
        else:
            raise TypeError(f"{f.name}: a tuple field needs metadata multiple or comma")
    else:
        raise TypeError(f"{f.name}: no Click option for the type {tp!r}")
    kwargs.update(override)
    return click.option(*decls, prefix + f.name, **kwargs)
