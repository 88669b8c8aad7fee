"""Errors the library raises. The CLI prints them as one line; none of them needs a traceback.

Exit codes follow the Unix convention the CLI promises: 2 for usage and recipe mistakes (the
user can fix the command), 1 for data and runtime problems.
"""

from __future__ import annotations


class CurateError(Exception):
    """Base class: a problem the user can act on. ``str(err)`` is the whole message."""

    exit_code: int = 1


class UsageError(CurateError):
    """A flag, argument or option value is wrong."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe is invalid. Holds every problem found, each prefixed by its YAML path."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class DataError(CurateError):
    """The input data cannot be read or is unusable as a whole (single bad rows are rejections)."""


class ModelError(CurateError):
    """A model cannot be loaded or does not fit the data (wrong kind, size, missing weights)."""


class MissingDependencyError(CurateError):
    """An optional package is needed for this feature."""

    def __init__(self, package: str, feature: str, hint: str | None = None):
        hint = hint or f"pip install {package}"
        super().__init__(f"{feature} needs the package '{package}': {hint}")
