"""Step name -> step class. An explicit dict: what a recipe can name is listed here, nowhere else.

Step modules import only light libraries at module level (polars, numpy); heavy ones are
imported inside ``compute``, so building the registry stays fast.
"""

from __future__ import annotations

from curate.errors import RecipeError
from curate.steps.base import Step


def _steps() -> dict[str, type[Step]]:
    from curate.steps.audit import Audit
    from curate.steps.captions import Captions
    from curate.steps.compare import Compare
    from curate.steps.dedup import DedupCaptions, DedupImages
    from curate.steps.export import Export
    from curate.steps.rank import Rank
    from curate.steps.select import Select
    from curate.steps.train import Train
    from curate.steps.validate import Validate

    steps: list[type[Step]] = [
        Validate,
        DedupImages,
        DedupCaptions,
        Select,
        Export,
        Captions,
        Audit,
        Rank,
        Train,
        Compare,
    ]
    return {cls.name: cls for cls in steps}


STEPS: dict[str, type[Step]] = {}


def get_steps() -> dict[str, type[Step]]:
    if not STEPS:
        STEPS.update(_steps())
    return STEPS


def get_step(name: str, path: str = "steps") -> type[Step]:
    steps = get_steps()
    if name not in steps:
        raise RecipeError(f"{path}: unknown step {name!r} (known: {', '.join(sorted(steps))})")
    return steps[name]
