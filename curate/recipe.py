"""Recipes: YAML -> a validated ``Recipe`` (dataset + ordered steps + export).

The whole recipe is checked before any work, and every problem is reported at once with its
YAML path, e.g. ``steps[1].dedup_images.treshold: unknown key``. ``--set`` overrides
(``steps.1.threshold=0.9``, ``dataset.limit=100``) are parsed as YAML scalars and type-checked
against the field they set.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from curate.errors import RecipeError
from curate.io.ingest import IngestConfig
from curate.steps.base import Step
from curate.table import BASE_COLUMNS

TOP_KEYS = ("name", "seed", "device", "dataset", "steps", "export")


@dataclass(frozen=True)
class Recipe:
    name: str
    dataset: IngestConfig
    steps: tuple[Step, ...]
    seed: int = 0
    device: str = "auto"
    source_path: str | None = None
    export: Step | None = None
    raw: dict = field(default_factory=dict, compare=False)

    def all_steps(self) -> tuple[Step, ...]:
        return self.steps + ((self.export,) if self.export is not None else ())

    def resolved(self) -> dict:
        """The recipe as plain data (what ``recipe.resolved.yaml`` holds)."""
        out: dict[str, Any] = {
            "name": self.name,
            "seed": self.seed,
            "device": self.device,
            "dataset": dataclasses.asdict(self.dataset),
            "steps": [
                {s.name: {"id": s.step_id, **s.config()} if s.step_id else s.config()}
                for s in self.steps
            ],
        }
        if self.export is not None:
            out["export"] = self.export.config()
        return out

    def plan(self) -> str:
        """A human-readable plan for ``--dry-run``."""
        lines = [f"recipe {self.name!r} (seed {self.seed})", f"  dataset: {self.dataset.name}"]
        for i, step in enumerate(self.all_steps(), start=1):
            cfg = ", ".join(f"{k}={v!r}" for k, v in step.config().items())
            produces = ", ".join(step.output_columns()) or "-"
            lines.append(f"  {i}. {step.run_name}({cfg})\n       adds: {produces}")
        return "\n".join(lines)


# --- type checking of YAML values against dataclass annotations ---------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any) -> Any:
    """Return ``value`` coerced to ``tp`` (int->float, list->tuple) or raise ``TypeError``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError(f"must be one of {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return check_value(value, arg)
            except TypeError:
                continue
        raise TypeError(f"must be {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise TypeError(f"must be null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TypeError(f"must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"must be a string, got {value!r}")
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise TypeError(f"must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [check_value(v, item_tp) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"must be a mapping, got {value!r}")
        return value
    return value


def build_config(cls: type, params: Any, path: str, problems: list[str]):
    """Instantiate dataclass ``cls`` from ``params``; append path-prefixed problems."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        problems.append(f"{path}: must be a mapping of settings, got {params!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs, ok = {}, True
    for key, value in params.items():
        if key not in fields:
            close = [f for f in fields if _similar(f, str(key))]
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(fields)})"
            problems.append(f"{path}.{key}: unknown key{hint}")
            ok = False
            continue
        try:
            kwargs[key] = check_value(value, hints[key])
        except TypeError as err:
            problems.append(f"{path}.{key}: {err}")
            ok = False
    missing = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and n not in params
    ]
    for name in missing:
        problems.append(f"{path}.{name}: required")
        ok = False
    if not ok:
        return None
    obj = cls(**kwargs)
    for problem in obj.validate() if hasattr(obj, "validate") else []:
        problems.append(f"{path}.{problem}")
    return obj


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.75


# --- overrides -----------------------------------------------------------------------------


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` overrides to the raw recipe mapping (values parsed as YAML).

    Step paths: ``steps.N.key`` or ``steps.N.step_name.key``, steps numbered from 1 as in
    the plan, the run's step folders and the report.
    """
    import copy

    raw = copy.deepcopy(raw)
    problems = []
    for item in overrides:
        if "=" not in item:
            problems.append(f"--set {item}: expected KEY=VALUE, e.g. steps.1.threshold=0.9")
            continue
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        parts = key.strip().split(".")
        if parts[0] == "steps":
            steps = raw.get("steps") or []
            if len(parts) < 3 or not parts[1].isdigit():
                problems.append(f"--set {item}: use steps.N.key=value (N counts from 1)")
                continue
            n = int(parts[1]) - 1
            if not 0 <= n < len(steps):
                problems.append(
                    f"--set {item}: the recipe has {len(steps)} steps, numbered 1..{len(steps)}"
                )
                continue
            entry = steps[n]
            if isinstance(entry, str):
                entry = steps[n] = {entry: {}}
            (name,) = entry.keys()
            rest = parts[2:]
            if rest[0] == name and len(rest) > 1:
                rest = rest[1:]
            if entry[name] is None:
                entry[name] = {}
            _set_path(entry[name], rest, value)
        elif parts[0] in TOP_KEYS:
            _set_path(raw, parts, value)
        else:
            problems.append(
                f"--set {item}: unknown key {parts[0]!r} (known: {', '.join(TOP_KEYS)})"
            )
    if problems:
        raise RecipeError(problems)
    return raw


def _set_path(target: dict, parts: list[str], value: Any) -> None:
    for p in parts[:-1]:
        target = target.setdefault(p, {})
    target[parts[-1]] = value


# --- parsing -------------------------------------------------------------------------------


def parse_recipe(raw: Any, *, name: str = "recipe", source_path: str | None = None) -> Recipe:
    """Validate a raw mapping into a ``Recipe``; raise ``RecipeError`` with every problem."""
    from curate.registry import get_steps

    problems: list[str] = []
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe: must be a mapping with keys {', '.join(TOP_KEYS)}")
    for key in raw:
        if key not in TOP_KEYS:
            problems.append(f"{key}: unknown key (known: {', '.join(TOP_KEYS)})")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(f"seed: must be an integer, got {seed!r}")
        seed = 0
    device = raw.get("device", "auto")
    if not isinstance(device, str):
        problems.append(f"device: must be a string like auto, cpu or cuda, got {device!r}")
    dataset = raw.get("dataset")
    if isinstance(dataset, str):
        dataset = {"name": dataset}
    if dataset is None:
        problems.append("dataset: required (e.g. dataset: {name: builtin:digits})")
        ds_cfg = None
    else:
        ds_cfg = build_config(IngestConfig, dataset, "dataset", problems)

    registry = get_steps()
    steps: list[Step] = []
    produced_by: dict[str, str] = {c: "ingest" for c in BASE_COLUMNS}
    raw_steps = raw.get("steps") or []
    if not isinstance(raw_steps, list):
        problems.append("steps: must be a list of {step_name: {settings}}")
        raw_steps = []
    entries = [(f"steps[{i}]", e) for i, e in enumerate(raw_steps, start=1)]
    if "export" in raw:
        entries.append(("export", {"export": raw["export"]}))
    export_step = None
    ids: dict[str, str] = {}  # step id -> its YAML path
    for path, entry in entries:
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            problems.append(f"{path}: must be a single-key mapping like {{select: {{...}}}}")
            continue
        ((step_name, params),) = entry.items()
        if step_name not in registry:
            problems.append(
                f"{path}: unknown step {step_name!r} (known: {', '.join(sorted(registry))})"
            )
            continue
        step_path = path if path == "export" else f"{path}.{step_name}"
        step_id = None
        if isinstance(params, dict) and "id" in params and path != "export":
            params = dict(params)
            step_id = params.pop("id")
            if not isinstance(step_id, str) or not step_id.isidentifier():
                problems.append(f"{step_path}.id: a plain identifier like naive, got {step_id!r}")
                step_id = None
            elif step_id in ids:
                problems.append(f"{step_path}.id: {step_id!r} is already the id of {ids[step_id]}")
                step_id = None
        _check_references(registry[step_name], params, ids, step_path, problems)
        step = build_config(registry[step_name], params, step_path, problems)
        if step is None:
            continue
        if step_id is not None:
            ids[step_id] = step_path
            step = step.with_id(step_id)
        for col in step.required_columns():
            if col not in produced_by and not col.startswith("src_"):
                problems.append(
                    f"{step_path}: needs column {col!r}, which no earlier step produces"
                )
        for col in step.output_columns():
            if col in produced_by:
                problems.append(
                    f"{step_path}: column {col!r} is already produced by {produced_by[col]}"
                    " (give this step a different label, or an id: naive)"
                )
            produced_by[col] = step_path
        if path == "export":
            export_step = step
        else:
            steps.append(step)
    if problems:
        raise RecipeError(problems)
    return Recipe(
        name=str(raw.get("name") or name),
        dataset=ds_cfg,
        steps=tuple(steps),
        seed=seed,
        device=device,
        source_path=source_path,
        export=export_step,
        raw=raw,
    )


def _check_references(
    cls: type[Step], params: Any, ids: dict[str, str], path: str, problems: list[str]
) -> None:
    """A setting in ``cls.references`` names an earlier step's id (or, outside those, an
    existing path): ``audit: {model: naive}`` after ``train: {id: naive}``."""
    if not isinstance(params, dict):
        return
    for key in cls.references:
        value = params.get(key)
        if isinstance(value, str):
            values = [value]
        elif isinstance(value, dict):
            values = list(value.values())
        elif isinstance(value, list | tuple):
            values = list(value)
        else:
            continue
        for v in values:
            if not isinstance(v, str) or v in ids:
                continue
            if v.isidentifier() and not Path(v).exists():
                known = f" (ids so far: {', '.join(ids)})" if ids else ""
                problems.append(
                    f"{path}.{key}: {v!r} is neither an earlier step's id nor an existing path"
                    + known
                )


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"--recipe {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise RecipeError(
            f"--recipe {path}: not UTF-8 text (byte {err.start}); save the recipe as UTF-8"
        ) from None
    except OSError as err:
        raise RecipeError(f"--recipe {path}: cannot read it ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"--recipe {path}: not valid YAML{where}") from None
    if overrides:
        raw = apply_overrides(raw or {}, overrides)
    return parse_recipe(raw, name=path.stem, source_path=str(path))


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
