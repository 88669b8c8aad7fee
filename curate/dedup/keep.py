"""Which sample of a duplicate group is kept: a total order over rows that ignores input order.

Every policy ends with ``sample_id`` as the tie-break, and sample ids are unique, so the order is
a function of the rows' values only: shuffling the table cannot change which sample is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from curate.errors import UsageError

if TYPE_CHECKING:
    import polars as pl

KEEP_POLICIES = ("largest", "longest_caption", "first")
KEEP_HELP = (
    "largest (most pixels, then most bytes) | longest_caption | first (lowest sample_id) | "
    "column:NAME (highest value of a table column)"
)


def check_policy(policy: str, columns: list[str] | None = None) -> str | None:
    """A problem with ``policy`` as a message, or None when it is valid."""
    if policy in KEEP_POLICIES:
        return None
    if policy.startswith("column:") and len(policy) > len("column:"):
        name = policy.split(":", 1)[1]
        if columns is not None and name not in columns:
            return f"keep column {name!r} is not in the table"
        return None
    return f"unknown keep policy {policy!r}; use {KEEP_HELP}"


def keep_priority(table: pl.DataFrame, policy: str = "largest") -> np.ndarray:
    """Rank of each row (0 = kept first) under ``policy``; ties broken by ``sample_id``."""
    import polars as pl

    problem = check_policy(policy, table.columns)
    if problem:
        raise UsageError(problem)
    n = table.height
    keys: list[pl.Expr] = []
    descending: list[bool] = []
    if policy == "largest":
        keys += [
            (pl.col("width").cast(pl.Int64) * pl.col("height").cast(pl.Int64)).fill_null(-1),
            pl.col("num_bytes").cast(pl.Int64).fill_null(-1),
        ]
        descending += [True, True]
    elif policy == "longest_caption":
        keys.append(pl.col("caption").str.len_chars().fill_null(-1))
        descending.append(True)
    elif policy.startswith("column:"):
        keys.append(pl.col(policy.split(":", 1)[1]))
        descending.append(True)
    keys.append(pl.col("sample_id"))
    descending.append(False)
    ordered = (
        table.lazy()
        .with_row_index("_row")
        .sort(keys, descending=descending, nulls_last=True, maintain_order=True)
        .select("_row")
        .collect()["_row"]
        .to_numpy()
    )
    rank = np.empty(n, np.int64)
    rank[ordered] = np.arange(n)
    return rank
