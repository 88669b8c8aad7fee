"""Does a proxy model's copying predict which rows another model copies? (the protect loop's
per-row sigma_n rule; reports/protect/proxy.md).

On ``builtin:digits_loop`` the naive model of ``recipes/protect_digits.yaml`` (same settings and
budget) is trained at seeds 0, 1, 2, and a cheap proxy at a quarter of the steps, each audited
with its own seed, all through one recipe per seed (dedup_images, dedup_captions, rank, the two
trainings, their audits and a compare against the ground-truth distinct digits). For every
ordered pair (proxy seed s, target seed t != s) the AUC of each per-row score of seed s
(``audit_copies``, ``audit_nn_count``, ``-audit_min_ratio``) for the rows seed t copies is set
beside the curation-only predictors (duplicate-group size, shared-caption flag, VGR percentile,
a random score). Two target labels: the audit's (``audit_copies > 0``) and the ground truth's
(the row's distinct digit is copied, NN1/NN2 < 1/3 against one image per digit).

``--loop-seeds`` also runs ``recipes/protect_digits_proxy.yaml`` (the rule chosen from this)
at those seeds and records its compare figures.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/proxy_copies.py --work /tmp/proxy \
        --report reports/protect [--loop-seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
NAIVE_RECIPE = ROOT / "recipes/protect_digits.yaml"
PROXY_RECIPE = ROOT / "recipes/protect_digits_proxy.yaml"
MODELS = {"full": "naive_audit", "cheap": "cheap_audit"}  # budget -> audit id


def naive_settings() -> tuple[dict, dict]:
    """The naive train step's and its audit's settings in recipes/protect_digits.yaml."""
    raw = yaml.safe_load(NAIVE_RECIPE.read_text())
    train = audit = None
    for entry in raw["steps"]:
        ((name, params),) = entry.items()
        if name == "train" and params.get("id") == "naive":
            train = {k: v for k, v in params.items() if k != "id"}
        if name == "audit" and params.get("id") == "naive_audit":
            audit = {k: v for k, v in params.items() if k not in ("id", "model")}
    assert train is not None and audit is not None, NAIVE_RECIPE
    return train, audit


def measurement_recipe(seed: int, steps: int, cheap_steps: int) -> dict:
    train, audit = naive_settings()
    full = dict(train, steps=steps, out="model_naive")
    cheap = dict(train, steps=cheap_steps, out="model_cheap")
    return {
        "name": f"proxy_copies_seed{seed}",
        "seed": seed,
        "dataset": {"name": "builtin:digits_loop"},
        "steps": [
            {"dedup_images": {}},
            {"dedup_captions": {}},
            {"rank": {}},
            {"train": {"id": "naive", **full}},
            {"audit": {"id": "naive_audit", "model": "naive", **audit}},
            {"train": {"id": "cheap", **cheap}},
            {"audit": {"id": "cheap_audit", "model": "cheap", **audit}},
            {
                "compare": {
                    "models": {"full": "naive_audit", "cheap": "cheap_audit"},
                    "group_column": "src_gt_group",
                    "heldout": "builtin:digits_loop_heldout",
                    "copy_features": "pixel",
                    "fd_features": "randconv",
                    "gallery": 0,
                }
            },
        ],  # fmt: skip
    }


def run(raw: dict, run_dir: Path) -> dict:
    from curate.recipe import parse_recipe
    from curate.runner import run_recipe

    start = time.perf_counter()
    results = run_recipe(parse_recipe(raw), run_dir, quiet=True)
    return {
        "wall_seconds": round(time.perf_counter() - start, 1),
        "steps": {r.name: round(r.seconds, 1) for r in results},
    }


def compare_json(run_dir: Path) -> dict:
    (step,) = [p for p in (run_dir / "steps").iterdir() if p.name.endswith("-compare")]
    return json.loads((step / "compare.json").read_text())


def auc(score: np.ndarray, label: np.ndarray) -> float | None:
    """Mann-Whitney AUC of ``score`` for ``label`` (ties count one half); None without both."""
    pos, neg = score[label], score[~label]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def per_row(run_dir: Path) -> pl.DataFrame:
    """The kept rows (what a protected model trains on) with each model's audit columns, the
    curation predictors and the ground-truth label (the row's distinct digit was copied)."""
    from curate.table import kept_rows, read_table

    table = read_table(run_dir)
    cmp = compare_json(run_dir)
    gid = dict(zip(table["sample_id"], table["src_gt_group"], strict=True))
    kept = kept_rows(table)
    cols = {
        "sample_id": kept["sample_id"],
        "gt_group": kept["src_gt_group"],
        "gt_transform": kept["src_gt_transform"],
        "dup_size": kept["dedup_images_cluster_size"].fill_null(1).cast(pl.Float64),
        "shared_caption": kept["dedup_captions_flag"].fill_null(False).cast(pl.Float64),
        "curation_rule": (
            kept["dedup_images_cluster"].is_not_null()
            | kept["dedup_captions_flag"].fill_null(False)
        ).cast(pl.Float64),
        "vgr_pct": kept["rank_pct"].cast(pl.Float64),
    }
    for budget, audit_id in MODELS.items():
        pre = f"audit_{audit_id}_"
        cols[f"{budget}_copies"] = kept[pre + "copies"].fill_null(0).cast(pl.Float64)
        cols[f"{budget}_nn_count"] = kept[pre + "nn_count"].fill_null(0).cast(pl.Float64)
        # no generation near the row: the largest ratio, the least copy-like
        cols[f"{budget}_neg_min_ratio"] = -kept[pre + "min_ratio"].fill_null(10.0)
        copied_groups = {gid[s] for s in cmp["models"][budget]["copied_ids"]}
        cols[f"{budget}_gt_copied"] = kept["src_gt_group"].is_in(list(copied_groups))
    return pl.DataFrame(cols)


PROXY_SCORES = ("copies", "nn_count", "neg_min_ratio")
RANDOM_DRAWS = 200
CURATION = ("dup_size", "shared_caption", "curation_rule", "vgr_pct", "random")
RULES = {  # binary rules a recipe can write as sigma_n_rules, on the proxy's columns
    "proxy copies > 0": lambda r, p: r[f"{p}_copies"] > 0,
    "proxy min_ratio < 0.5": lambda r, p: r[f"{p}_neg_min_ratio"] > -0.5,
    "curation (dup cluster or shared caption)": lambda r, p: r["curation_rule"] > 0,
    "curation or proxy copies > 0": lambda r, p: (r["curation_rule"] > 0) | (r[f"{p}_copies"] > 0),
    "curation or proxy min_ratio < 0.5": (
        lambda r, p: (r["curation_rule"] > 0) | (r[f"{p}_neg_min_ratio"] > -0.5)
    ),
}


def analyse(rows: dict[int, pl.DataFrame]) -> dict:
    seeds = sorted(rows)
    ids = rows[seeds[0]]["sample_id"].to_list()
    for s in seeds:  # one kept set for every seed (dedup does not depend on the seed)
        assert rows[s]["sample_id"].to_list() == ids
    pairs = [(s, t) for s in seeds for t in seeds if s != t]
    labels = {"audit": lambda t: rows[t]["full_copies"].to_numpy() > 0,
              "gt": lambda t: rows[t]["full_gt_copied"].to_numpy()}  # fmt: skip
    out: dict = {"seeds": seeds, "pairs": [list(p) for p in pairs], "auc": {}, "rules": {}}
    for lname, label_of in labels.items():
        table: dict[str, list] = {}
        for s, t in pairs:
            y = label_of(t)
            for budget in MODELS:
                for score in PROXY_SCORES:
                    key = f"{budget} proxy: {score}"
                    table.setdefault(key, []).append(
                        auc(rows[s][f"{budget}_{score}"].to_numpy(), y)
                    )
            for name in CURATION:
                if name == "random":  # RANDOM_DRAWS scores per pair: the spread of chance
                    rng = np.random.default_rng(1000 * s + t)
                    draws = [auc(rng.random(len(y)), y) for _ in range(RANDOM_DRAWS)]
                    table.setdefault(name, []).extend(draws)
                    continue
                x = rows[t][name].to_numpy()  # the same columns for every seed
                table.setdefault(name, []).append(auc(x, y))
        out["auc"][lname] = {
            k: _spread(v) | ({"per_pair": v} if k != "random" else {}) for k, v in table.items()
        }
        rules: dict[str, dict] = {}
        for rname, rule in RULES.items():
            for budget in MODELS if "proxy" in rname else ("full",):
                key = f"{rname} [{budget}]" if "proxy" in rname else rname
                flagged, recall, gen_share, precision = [], [], [], []
                for s, t in pairs:
                    hit = rule(rows[s], budget).to_numpy()
                    y = label_of(t)
                    flagged.append(float(hit.sum()))
                    recall.append(float((hit & y).sum() / max(y.sum(), 1)))
                    precision.append(float((hit & y).sum() / max(hit.sum(), 1)))
                    copies = rows[t]["full_copies"].to_numpy()
                    gen_share.append(float(copies[hit].sum() / max(copies.sum(), 1)))
                rules[key] = {
                    "rows_flagged": _spread(flagged),
                    "recall": _spread(recall),
                    "precision": _spread(precision),
                    "share_of_target_copies": _spread(gen_share),
                }
        out["rules"][lname] = rules
    per_seed = {}
    for s in seeds:
        r = rows[s]
        per_seed[s] = {
            budget: {
                "rows_copied_audit": int((r[f"{budget}_copies"] > 0).sum()),
                "rows_copied_gt": int(r[f"{budget}_gt_copied"].sum()),
                "copies_on_kept_rows": int(r[f"{budget}_copies"].sum()),
            }
            for budget in MODELS
        }
    out["per_seed_rows"] = per_seed
    jac = []
    for s, t in pairs:
        if s < t:
            a, b = rows[s]["full_copies"].to_numpy() > 0, rows[t]["full_copies"].to_numpy() > 0
            jac.append(float((a & b).sum() / max((a | b).sum(), 1)))
    out["copied_rows_jaccard_between_seeds"] = _spread(jac)
    out["kept_rows"] = len(ids)
    return out


def _spread(values: list) -> dict:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": float(min(v)),
            "max": float(max(v)), "n": len(v)}  # fmt: skip


def model_figures(run_dir: Path) -> dict:
    cmp = compare_json(run_dir)
    stats = json.loads((run_dir / "stats.json").read_text())
    audits = {s.get("id"): s["stats"] for s in stats["steps"] if s["step"] == "audit"}
    return {
        budget: {
            "memorized_fraction_gt": cmp["models"][budget]["memorized_fraction"],
            "memorized_fraction_heldout_space": cmp["models"][budget][
                "memorized_fraction_heldout_space"
            ],
            "memorized_fraction_audit": audits[audit_id]["memorized_fraction"],
            "copied_digits": cmp["models"][budget]["copied_images"],
            "frechet": cmp["models"][budget]["frechet"],
        }
        for budget, audit_id in MODELS.items()
    }


def loop_recipe(
    seed: int,
    work: Path,
    proxy_seed: int | None,
    sigma_n: float | None = None,
    where: str | None = None,
) -> dict:
    """recipes/protect_digits_proxy.yaml at ``seed``. With ``proxy_seed``, its proxy and naive
    models are this script's measured naive models (the same settings; CPU training is
    deterministic, so they are the models the recipe would train) read by path, the proxy
    the one of seed ``proxy_seed``: only the protected model is trained."""
    raw = yaml.safe_load(PROXY_RECIPE.read_text())
    raw["seed"] = seed
    for entry in raw["steps"]:
        ((name, params),) = entry.items()
        if where is not None and params.get("sigma_n_rules"):  # other rows
            params["sigma_n_rules"] = [{"where": where, "sigma_n": 1.0}]
        for rule in params.get("sigma_n_rules") or () if sigma_n is not None else ():
            rule["sigma_n"] = sigma_n  # another noise level on the same rows
    if proxy_seed is None:
        return raw
    steps = []
    for entry in raw["steps"]:
        ((name, params),) = entry.items()
        if name == "train" and params["id"] in ("proxy", "naive"):
            continue
        if name == "audit" and params["id"] == "proxy_audit":
            params.update(model=str(work / f"measure_seed{proxy_seed}/model_naive"),
                          seed=proxy_seed)  # fmt: skip
        if name == "audit" and params["id"] == "naive_audit":
            params["model"] = str(work / f"measure_seed{seed}/model_naive")
        steps.append({name: params})
    raw["steps"] = steps
    return raw


def loop_figures(run_dir: Path) -> dict:
    cmp = compare_json(run_dir)
    stats = json.loads((run_dir / "stats.json").read_text())
    sigma = [s["stats"].get("sigma_n_rows") for s in stats["steps"] if s.get("id") == "protected"]
    from curate.table import read_table

    (train_dir,) = [p for p in (run_dir / "steps").iterdir() if p.name.endswith("-protected")]
    trained = pl.read_parquet(train_dir / "trained_rows.parquet")
    by_level = (
        read_table(run_dir)
        .join(trained, on="sample_id")
        .group_by("train_sigma_n")
        .agg(
            rows=pl.len(),
            naive_copies=pl.col("audit_naive_audit_copies").sum(),
            protected_copies=pl.col("audit_protected_audit_copies").sum(),
        )
        .sort("train_sigma_n")
    )
    return {
        # the seconds each step took when it was computed (a rerun skips finished steps)
        "step_seconds": {
            st["step"] + (f"-{st['id']}" if st.get("id") else ""): st["seconds"]
            for st in stats["steps"]
        },
        "copies_by_sigma_n": by_level.to_dicts(),  # the audits' copies on rows at each level
        "sigma_n_rows": sigma[0] if sigma else None,
        "models": {
            k: {
                key: m[key]
                for key in (
                    "memorized_fraction",
                    "memorized_fraction_heldout_space",
                    "fraction_ratio_below_0.5",
                    "copied_images",
                    "frechet",
                )
            }
            for k, m in cmp["models"].items()
        },  # fmt: skip
        "ratios": cmp["ratios"],
    }


def _f(x: dict, digits: int = 2) -> str:
    if x["mean"] is None:
        return "n/a"
    return f"{x['mean']:.{digits}f} ± {x['std']:.{digits}f}"


def write_markdown(data: dict, path: Path) -> None:
    a = data["analysis"]
    lines = [
        "# Does a proxy model's copying predict another seed's? (`scripts/proxy_copies.py`)",
        "",
        "```",
        data["command"],
        "```",
        "",
        *(
            [f"Per-row figures recorded by `{data['measured_by']}`.", ""]
            if data.get("measured_by")
            else []
        ),
        f"Data `builtin:digits_loop`; models: the naive settings of `recipes/protect_digits.yaml` "
        f"({data['steps']} steps, `rows: all`) and a cheap proxy at {data['cheap_steps']} steps, "
        f"seeds {a['seeds']}, each audited (256 samples, DDIM 25) with its own seed. Rows scored: "
        f"the {a['kept_rows']} rows curation keeps (what a protected model trains on). "
        f"Mean ± std over the {len(a['pairs'])} ordered pairs (proxy seed s, target seed t != s); "
        "the curation predictors do not depend on s. Wall time: "
        + ", ".join(f"seed {s} {r['wall_seconds']:.0f} s" for s, r in data["runs"].items())
        + ".",
        "",
        "## The models",
        "",
        "| seed | budget | memorized (vs distinct digits) | held-out space | audit's (vs kept rows) "
        "| digits copied | kept rows copied (audit / gt) | FD |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s, figs in data["models"].items():
        for budget, m in figs.items():
            rc = {str(k): v for k, v in a["per_seed_rows"].items()}[str(s)][budget]
            lines.append(
                f"| {s} | {budget} | {m['memorized_fraction_gt']:.3f} | "
                f"{m['memorized_fraction_heldout_space']:.3f} | {m['memorized_fraction_audit']:.3f}"
                f" | {m['copied_digits']} | {rc['rows_copied_audit']} / {rc['rows_copied_gt']} | "
                f"{m['frechet']:.3f} |"
            )
    lines += [
        "",
        "Copied-row sets of two full-budget seeds overlap by Jaccard "
        f"{_f(a['copied_rows_jaccard_between_seeds'])}.",
        "",
        "## AUC for the target's copied rows",
        "",
        "Label `audit`: the target's `audit_copies > 0` (the audit step's column). Label `gt`: the "
        "row's ground-truth digit is among those the target copies (NN1/NN2 < 1/3 against one "
        "image per digit, the compare step's test). `random`: 200 uniform scores per pair, its ± "
        "the spread of a chance AUC on these rows. Curation predictors: `dup_size` "
        "(`dedup_images_cluster_size`), `shared_caption` (`dedup_captions_flag`), "
        "`curation_rule` (either, the rule of `recipes/protect_digits.yaml`), `vgr_pct` "
        "(`rank_pct` from the `rank` step's defaults).",
        "",
        "| predictor | AUC (label audit) | AUC (label gt) |",
        "| --- | --- | --- |",
    ]
    for key in a["auc"]["audit"]:
        lines.append(f"| {key} | {_f(a['auc']['audit'][key])} | {_f(a['auc']['gt'][key])} |")
    lines += [
        "",
        "## Binary rules (what `sigma_n_rules` can write), label audit",
        "",
        "rows flagged (of the kept rows), recall and precision of the target's copied rows, and "
        "the share of the target's memorized generations whose nearest training row is flagged.",
        "",
        "| rule | rows flagged | recall | precision | share of target copies | recall (gt) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in a["rules"]["audit"].items():
        g = a["rules"]["gt"][key]
        lines.append(
            f"| {key} | {_f(r['rows_flagged'], 1)} | {_f(r['recall'])} | {_f(r['precision'])} "
            f"| {_f(r['share_of_target_copies'])} | {_f(g['recall'])} |"
        )
    if data.get("loop"):
        lines += [
            "",
            "## The proxy-rule loop (`recipes/protect_digits_proxy.yaml`)",
            "",
            (
                "The proxy and naive models are the measured naive models above, read by path "
                "(`--loop-reuse`: the same settings and seed, so the models the recipe trains), "
                "the proxy of seed s being the next seed's; only the protected model is trained."
                if data.get("loop_reuse")
                else "Every model trained by the recipe (proxy seed 7)."
            )
            + (
                f" The flagged rows at sigma_n {data['loop_sigma_n']:g} instead of the recipe's."
                if data.get("loop_sigma_n") is not None
                else ""
            )
            + (
                f" One rule instead of the recipe's: `{data['loop_where']}`."
                if data.get("loop_where") is not None
                else ""
            ),
            "",
            "| seed | rows noised | model | memorized | held-out space | < 0.5 | digits "
            "copied | FD |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s, loop in data["loop"].items():
            levels = loop["sigma_n_rows"] or {}
            noised = (
                f"{sum(n for v, n in levels.items() if float(v) > 0)} of {sum(levels.values())}"
            )
            for label, m in loop["models"].items():
                lines.append(
                    f"| {s} | {noised} | {label} | {m['memorized_fraction']:.3f} | "
                    f"{m['memorized_fraction_heldout_space']:.3f} | "
                    f"{m['fraction_ratio_below_0.5']:.3f} | {m['copied_images']} | "
                    f"{m['frechet']:.3f} |"
                )
        lines += [
            "",
            "Memorized generations (the audits' `audit_copies`, vs the kept rows) on the rows "
            "at each noise level, naive -> protected:",
            "",
        ]
        for s, loop in data["loop"].items():
            parts = [
                f"sigma_n {r['train_sigma_n']:g} ({r['rows']} rows): "
                f"{r['naive_copies']} -> {r['protected_copies']}"
                for r in loop["copies_by_sigma_n"]
            ]
            lines.append(f"* seed {s}: " + "; ".join(parts))
        lines += ["", "Ratios naive / model, mean ± std over seeds (FD: model / naive).", ""]
        lines += ["| model | memorized | held-out space | FD |", "| --- | --- | --- | --- |"]
        for label in ("protected", "protected+amg"):
            fig = {"memorized_fraction": [], "memorized_fraction_heldout_space": [], "fd": []}
            for loop in data["loop"].values():
                base, m = loop["models"]["naive"], loop["models"][label]
                for key in ("memorized_fraction", "memorized_fraction_heldout_space"):
                    fig[key].append(base[key] / m[key] if m[key] else math.inf)
                fig["fd"].append(m["frechet"] / base["frechet"])
            lines.append(
                f"| {label} | {_f(_spread(fig['memorized_fraction']))}x | "
                f"{_f(_spread(fig['memorized_fraction_heldout_space']))}x | "
                f"{_f(_spread(fig['fd']), 3)} |"
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/proxy", help="run folders go here")
    p.add_argument("--report", default=str(ROOT / "reports/protect"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=None, help="default: the naive recipe's")
    p.add_argument("--cheap-steps", type=int, default=None, help="default: a quarter")
    p.add_argument(
        "--measured",
        default=None,
        help="an earlier proxy.json: analyse its recorded rows instead of training",
    )
    p.add_argument("--loop-seeds", default="", help="also run the proxy-rule recipe at these")
    p.add_argument(
        "--loop-sigma-n",
        type=float,
        default=None,
        help="the loop's flagged rows at this noise level instead of the recipe's",
    )
    p.add_argument(
        "--loop-where", default=None, help="the loop's one noise rule instead of the recipe's"
    )
    p.add_argument(
        "--loop-reuse",
        action="store_true",
        help="the loop reads the measured naive models instead of training them again",
    )
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    work, report = Path(args.work), Path(args.report)
    work.mkdir(parents=True, exist_ok=True)
    steps = args.steps or naive_settings()[0]["steps"]
    cheap_steps = args.cheap_steps or steps // 4
    seeds = [int(s) for s in args.seeds.split(",")]
    flags = [
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
        for k, v in vars(args).items()
        if v not in (None, "", False)
    ]
    command = "OMP_NUM_THREADS=1 .venv/bin/python scripts/proxy_copies.py " + " ".join(flags)
    data: dict = {"command": command, "steps": steps, "cheap_steps": cheap_steps, "runs": {},
                  "models": {}}  # fmt: skip
    rows = {}
    if args.measured:  # the per-row figures an earlier run of this script recorded
        old = json.loads(Path(args.measured).read_text())
        data.update(steps=old["steps"], cheap_steps=old["cheap_steps"], measured_by=old["command"])
        for s in seeds:
            data["runs"][s], data["models"][s] = old["runs"][str(s)], old["models"][str(s)]
            rows[s] = pl.DataFrame(old["rows"][str(s)])
    for s in seeds if not args.measured else ():
        run_dir = work / f"measure_seed{s}"
        data["runs"][s] = run(measurement_recipe(s, steps, cheap_steps), run_dir)
        data["models"][s] = model_figures(run_dir)
        rows[s] = per_row(run_dir)
        print(f"seed {s}: {data['runs'][s]['wall_seconds']} s {data['models'][s]}", flush=True)
    data["analysis"] = analyse(rows)
    data["rows"] = {s: r.to_dicts() for s, r in rows.items()}
    if args.loop_seeds:
        data["loop"] = {}
        data["loop_reuse"] = args.loop_reuse
        data["loop_sigma_n"] = args.loop_sigma_n
        data["loop_where"] = args.loop_where
        for s in (int(x) for x in args.loop_seeds.split(",")):
            proxy_seed = seeds[(seeds.index(s) + 1) % len(seeds)] if args.loop_reuse else None
            raw = loop_recipe(s, work, proxy_seed, args.loop_sigma_n, args.loop_where)
            name = f"loop_seed{s}" + ("_reuse" if args.loop_reuse else "")
            if args.loop_sigma_n is not None:
                name += f"_sigma{args.loop_sigma_n:g}"
            if args.loop_where is not None:
                name += (
                    "_where" + hashlib.blake2b(args.loop_where.encode(), digest_size=4).hexdigest()
                )
            run_dir = work / name
            info = run(raw, run_dir)
            data["loop"][s] = loop_figures(run_dir) | {
                "proxy_seed": proxy_seed or 7,
                "this_invocation": info,
            }
            print(f"loop seed {s}: {info['wall_seconds']} s", flush=True)
    report.mkdir(parents=True, exist_ok=True)
    (report / "proxy.json").write_text(json.dumps(data, indent=1) + "\n")
    write_markdown(data, report / "proxy.md")


if __name__ == "__main__":
    main()
