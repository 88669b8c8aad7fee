"""``compare``: how much copying curation removed, and what it cost (the protect loop's report).

Reads the generations of earlier ``audit`` steps (by their ids) and scores every set the same
way against one reference, so the figures compare: a naive model trained on all rows, a
protected one trained on the curated rows, and the protected one under AMG. Adds no columns;
writes ``compare.json`` and one gallery PNG per model to its step folder and the report's first
section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl

from curate.errors import DataError
from curate.steps.base import RunContext, Step

COMPARE_FILE = "compare.json"
HIST_EDGES = tuple(round(0.05 * i, 2) for i in range(0, 31))  # NN1/NN2 in [0, 1.5], 0.05 wide
PROMPT_K = 5  # held-out neighbours voting on a generation's caption


@dataclass(frozen=True)
class Compare(Step):
    """Scores the generations of the audits named in ``models`` (label -> an audit step's id;
    ``ID/amg`` for the AMG-guided samples of an audit with ``amg``) against one reference set
    and puts them side by side:

    * ``memorized_fraction``: NN1/NN2 < 1/3 in pixel space (the audit's definition);
    * ``copy_rate``: top-1 cosine similarity above the features' copy threshold in an independent
      feature space (``copy_features``; SSCD: 0.5), one AMG does not optimise;
    * ``memorized_fraction_heldout_space``: the same NN1/NN2 < 1/3 test in a whitened PCA
      space fitted on the ``heldout`` images (``curate.audit.metrics.HeldoutSpace``), a second
      space AMG does not optimise that also works on images too small for SSCD;
    * the NN-ratio distribution (fractions below 1/3 and 0.5, a histogram on ``HIST_EDGES``);
    * ``prompt_accuracy`` (a text model's audits, held-out images with captions): the share of
      generations whose held-out neighbours (``PROMPT_K`` nearest, in the held-out space) most
      often carry the prompt's class, the held-out caption sharing the most of the prompt's
      words: a classifier of the held-out data, for datasets whose captions name a class
      (digits: a prompt "a handwritten digit five, sample 12" is of class "a handwritten digit
      five");
    * ``frechet``: Fréchet distance (``fd_features``) to the ``heldout`` images (any source
      ``curate ingest`` reads), so a model gets no credit for reproducing its training set;
    * the ratios ``baseline`` / each other model, and a gallery of each model's worst copies
      (generation | nearest reference image).

    The reference is every row ingest accepted (``reference: ok``) or the kept rows (``kept``);
    with ``group_column`` (e.g. the ground truth ``src_gt_group``) only the first row of each
    group, so a copy's NN2 is another image, not a second copy of the same one. All audits must
    come from the same seeds and settings (checked; ``same_seeds`` in ``compare.json``).
    """

    name: ClassVar[str] = "compare"
    requires: ClassVar[tuple[str, ...]] = ("sample_id", "status")
    references: ClassVar[tuple[str, ...]] = ("models",)

    models: dict[str, str]
    baseline: str | None = None  # default: the first model
    reference: Literal["ok", "kept"] = "ok"
    group_column: str | None = None
    heldout: str | None = None
    copy_features: Literal["sscd", "pixel", "clip"] = "sscd"
    fd_features: Literal["randconv", "pixel"] = "randconv"
    gallery: int = 8

    def required_columns(self) -> tuple[str, ...]:
        return self.requires + ((self.group_column,) if self.group_column else ())

    def validate(self) -> list[str]:
        problems = []
        if not self.models or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.models.items()
        ):
            problems.append("models: a mapping label -> audit step id (or ID/amg)")
        elif self.baseline is not None and self.baseline not in self.models:
            problems.append(f"baseline: {self.baseline!r} is not one of {', '.join(self.models)}")
        if self.gallery < 0:
            problems.append("gallery: must be >= 0")
        return problems

    # ------------------------------------------------------------------------------ compute

    def _audit_dir(self, ref: str, ctx: RunContext) -> Path:
        step_id, _, sub = ref.partition("/")
        if step_id not in ctx.step_dirs:
            raise DataError(
                f"compare.models: {ref!r}: no earlier step has id {step_id!r} "
                f"(ids: {', '.join(ctx.step_dirs) or 'none'})"
            )
        out = ctx.step_dirs[step_id] / sub if sub else ctx.step_dirs[step_id]
        if not (out / "audit.json").is_file():
            raise DataError(f"compare.models: {ref!r} has no audit.json in {out}")
        return out

    def compute(self, table: pl.DataFrame, ctx: RunContext) -> pl.DataFrame:
        import torch
        from PIL import Image

        from curate.audit.scoring import audit_samples
        from curate.audit.settings import AuditSettings
        from curate.core.images import pil_to_tensor
        from curate.io.training import training_set_from_table
        from curate.table import kept_rows, ok_mask

        if table.height == 0:  # nothing ingested: nothing was trained or audited
            return pl.DataFrame()
        dirs = {label: self._audit_dir(ref, ctx) for label, ref in self.models.items()}
        audits = {k: json.loads((d / "audit.json").read_text()) for k, d in dirs.items()}
        samples = {}
        for label, d in dirs.items():
            files = sorted((d / "samples").glob("*.png"))
            if not files:
                raise DataError(f"compare: {d / 'samples'} holds no generations")
            pils = [Image.open(f) for f in files]
            for img in pils:
                img.load()
            channels = 1 if pils[0].mode == "L" else 3
            samples[label] = pil_to_tensor(pils, channels=channels, resolution=pils[0].size[0])
        shapes = {tuple(x.shape[1:]) for x in samples.values()}
        if len(shapes) != 1:
            raise DataError(f"compare: the audits' generations differ in shape: {sorted(shapes)}")
        channels, res, _ = next(iter(shapes))
        seed_keys = ("seed", "num_samples", "steps", "sampler")
        seeds = {k: {s: a["settings"].get(s) for s in seed_keys} for k, a in audits.items()}
        same_seeds = len({json.dumps(v, sort_keys=True) for v in seeds.values()}) == 1

        ref_table = kept_rows(table) if self.reference == "kept" else table.filter(ok_mask(table))
        if self.group_column:
            ref_table = ref_table.filter(pl.col(self.group_column).is_not_null()).unique(
                self.group_column, keep="first", maintain_order=True
            )
        ref = training_set_from_table(
            ref_table, ctx.images(), resolution=res, channels=channels, rows="ok", where="compare"
        )
        heldout, heldout_captions = None, None
        if self.heldout:
            from curate.train.data import load_training_data

            data = load_training_data(self.heldout, channels=channels, resolution=res, quiet=True)
            heldout, heldout_captions = data.images, data.captions
            if heldout is None:
                heldout = torch.cat(
                    [
                        data.batch(range(i, min(i + 512, len(data))))
                        for i in range(0, len(data), 512)
                    ]
                )

        space = None
        if heldout is not None:
            from curate.audit.metrics import HeldoutSpace

            space = HeldoutSpace.fit(heldout.flatten(1).numpy())
            ref_flat = ref.images.flatten(1).numpy()
            ref_vs_ref = space.reference_nn_ratio(ref_flat)
        models: dict[str, Any] = {}
        galleries = {}
        for label, x in samples.items():
            settings = AuditSettings(
                num_samples=len(x), features=self.copy_features, seed=ctx.seed,
                fd_features=self.fd_features,
            )  # fmt: skip
            result = audit_samples(
                x, ref, settings, device=ctx.device, fd_reference=heldout,
                fd_reference_name=f"held-out images ({self.heldout})",
            )  # fmt: skip
            per = result.per_sample
            ratio = per["nn_ratio"].to_numpy()
            counts, _ = np.histogram(np.clip(ratio, 0, HIST_EDGES[-1]), bins=HIST_EDGES)
            m = result.summary["metrics"]
            memorized = per.filter(pl.col("memorized_ratio"))
            models[label] = {
                "audit": self.models[label],
                "model": audits[label].get("model"),
                "num_samples": len(x),
                "memorized_fraction": float((ratio < 1 / 3).mean()),
                "fraction_ratio_below_0.5": float((ratio < 0.5).mean()),
                "copy_rate": float(per["copy_similarity"].mean()),
                # the same test, distinct reference images against each other: near 0 when the
                # feature space separates copies from near neighbours in this data
                "copy_rate_reference_vs_reference": m["similarity"]["train_vs_train_frac_above"],
                "copy_features": m["similarity"]["features"],
                "copy_threshold": result.summary["settings"]["sim_threshold"],
                "similarity_p50": float(np.median(per["similarity"].to_numpy())),
                "nn_ratio": {"p5": m["nn_ratio"]["p5"], "p50": m["nn_ratio"]["p50"],
                             "mean": m["nn_ratio"]["mean"], "min": m["nn_ratio"]["min"]},
                "nn_ratio_histogram": {"edges": list(HIST_EDGES), "counts": counts.tolist()},
                "frechet": m["frechet"]["value"],
                "frechet_name": m["frechet"]["name"],
                "frechet_reference": m["frechet"]["reference"],
                "copied_images": int(memorized["nn_sample_id"].n_unique()),
                "copied_ids": sorted(set(memorized["nn_sample_id"].to_list())),
                "audit_memorized_fraction": audits[label].get("memorized_fraction"),
                "audit_num_train": audits[label].get("num_train"),
                "generations_off_data": result.summary["generation_check"]["off_data"],
                "seeds": seeds[label],
            }  # fmt: skip
            if space is not None:
                h = space.nn_ratio(x.flatten(1).numpy(), ref_flat)
                models[label]["memorized_fraction_heldout_space"] = float((h < 1 / 3).mean())
                models[label]["heldout_space"] = {
                    "components": int(space.basis.shape[0]),
                    "fraction_ratio_below_0.5": float((h < 0.5).mean()),
                    "nn_ratio_p50": float(np.median(h)),
                    # distinct reference images against each other: near 0 when it separates
                    "reference_vs_reference_below_1/3": float((ref_vs_ref < 1 / 3).mean()),
                }
                models[label]["prompt_accuracy"] = _prompt_accuracy(
                    space, heldout, heldout_captions, x, dirs[label]
                )
            else:
                models[label]["memorized_fraction_heldout_space"] = None
                models[label]["prompt_accuracy"] = None
            galleries[label] = self._gallery(per, x, ref, label, ctx)
        baseline = self.baseline or next(iter(self.models))
        ratios = {}
        for label, fig in models.items():
            if label == baseline:
                continue
            base = models[baseline]
            ratios[f"{baseline}/{label}"] = {
                key: (base[key] / fig[key]) if fig[key] and base[key] is not None else None
                for key in (
                    "memorized_fraction",
                    "memorized_fraction_heldout_space",
                    "fraction_ratio_below_0.5",
                    "copy_rate",
                    "frechet",
                    "prompt_accuracy",
                )
            }
        out = {
            "baseline": baseline,
            "same_seeds": same_seeds,
            "reference": {
                "rows": self.reference,
                "group_column": self.group_column,
                "num_images": len(ref.images),
                "resolution": res,
            },
            "heldout": {
                "source": self.heldout,
                "num_images": None if heldout is None else len(heldout),
            },
            "models": models,
            "ratios": ratios,
            "galleries": {k: str(v.name) if v else None for k, v in galleries.items()},
        }
        (ctx.artifact_dir() / COMPARE_FILE).write_text(json.dumps(out, indent=2) + "\n")
        ctx.stats.update(
            same_seeds=same_seeds,
            memorized_fraction={k: v["memorized_fraction"] for k, v in models.items()},
            copy_rate={k: v["copy_rate"] for k, v in models.items()},
            memorized_fraction_heldout_space={
                k: v["memorized_fraction_heldout_space"] for k, v in models.items()
            },
        )
        ctx.report.add_section("compare", "Protect loop: copying removed, and its cost",
                               self._html(out, galleries), order=0)  # fmt: skip
        return pl.DataFrame()

    def _gallery(self, per: pl.DataFrame, x, ref, label: str, ctx: RunContext) -> Path | None:
        """``gallery_<label>.png``: the ``gallery`` lowest-ratio generations, each beside its
        nearest reference image."""
        from PIL import Image

        from curate.core.images import tensor_to_pil

        if not self.gallery:
            return None
        worst = per.sort("nn_ratio").head(self.gallery)
        index = {sid: i for i, sid in enumerate(ref.sample_ids)}
        gens = tensor_to_pil(x[worst["index"].to_list()])
        nns = tensor_to_pil(ref.images[[index[s] for s in worst["nn_sample_id"].to_list()]])
        side = max(48, gens[0].size[0] * 6)
        pad = 4
        sheet = Image.new("L", (2 * side + 3 * pad, len(gens) * (side + pad) + pad), 255)
        for r, (g, n) in enumerate(zip(gens, nns, strict=True)):
            for c, img in enumerate((g, n)):
                tile = img.convert("L").resize((side, side), Image.Resampling.NEAREST)
                sheet.paste(tile, (pad + c * (side + pad), pad + r * (side + pad)))
        safe = "".join(ch if ch.isalnum() else "_" for ch in label)
        path = ctx.artifact_dir() / f"gallery_{safe}.png"
        sheet.save(path)
        return path

    def _html(self, out: dict, galleries: dict[str, Path | None]) -> str:
        from PIL import Image

        from curate.report import esc, html_table, png_data_uri

        models = out["models"]
        rows = [
            (label, f"{m['memorized_fraction']:.3f}", _fmt(m["memorized_fraction_heldout_space"]),
             f"{m['fraction_ratio_below_0.5']:.3f}", f"{m['copy_rate']:.3f}",
             m["copied_images"], f"{m['frechet']:.3g}", f"{m['nn_ratio']['p50']:.3f}",
             _fmt(m["prompt_accuracy"]))
            for label, m in models.items()
        ]  # fmt: skip
        first = next(iter(models.values()))
        head = (
            f"<p>{len(models)} generation sets scored against one reference: "
            f"{out['reference']['num_images']} images ({esc(out['reference']['rows'])} rows"
            + (f", one per {esc(out['reference']['group_column'])}" if out["reference"]["group_column"] else "")
            + f") at {out['reference']['resolution']} px. Same seeds and sampler settings: "
            f"<b>{'yes' if out['same_seeds'] else 'NO'}</b>. Copy rate: {esc(first['copy_features'])} "
            f"similarity > {first['copy_threshold']:.3g}. Fréchet: {esc(first['frechet_name'])} vs "
            f"{esc(first['frechet_reference'])}.</p>"
        )  # fmt: skip
        table = html_table(
            rows,
            ["model", "memorized (NN1/NN2 < 1/3)", "memorized, held-out space",
             "NN1/NN2 < 0.5", "copy rate", "distinct images copied", "Fréchet",
             "median NN1/NN2", "prompt accuracy"],
        )  # fmt: skip
        ratio_rows = [
            (pair, *(f"{v:.2f}" if v is not None else "-" for v in r.values()))
            for pair, r in out["ratios"].items()
        ]
        ratios = html_table(
            ratio_rows,
            ["ratio", "memorized", "memorized, held-out space", "NN1/NN2 < 0.5", "copy rate",
             "Fréchet", "prompt accuracy"],
        )  # fmt: skip
        hists = "".join(
            f"<div class='group'><b>{esc(label)}</b> NN1/NN2 histogram: "
            + " ".join(f"{c}" for c in m["nn_ratio_histogram"]["counts"])
            + "</div>"
            for label, m in models.items()
        )
        gallery = "".join(
            f"<div class='group'><b>{esc(label)}</b>: worst copies (generation | nearest "
            f"reference image)<br><img src='{png_data_uri(Image.open(p), size=512)}'></div>"
            for label, p in galleries.items()
            if p is not None
        )
        return head + table + "<h3>Ratios</h3>" + ratios + hists + gallery


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _prompt_accuracy(space, heldout, captions, x, audit_dir: Path) -> float | None:
    """The share of generations whose ``PROMPT_K`` nearest held-out images (in ``space``) most
    often carry the generation's prompt; None without prompts or held-out captions."""
    from collections import Counter

    from curate.core.neighbours import knn

    per = audit_dir / "samples.parquet"
    if captions is None or not per.is_file():
        return None
    frame = pl.read_parquet(per)
    if "prompt" not in frame.columns or frame.height != len(x):
        return None
    order = frame.sort("index")["prompt"].to_list() if "index" in frame.columns else None
    prompts = order if order is not None else frame["prompt"].to_list()
    k = min(PROMPT_K, len(captions))
    _, idx = knn(
        space.features(x.flatten(1).numpy()), space.features(heldout.flatten(1).numpy()), k
    )
    classes = sorted({c for c in map(_first_caption, captions) if c})
    words = {c: _words(c) for c in classes}
    hits = []
    for row, prompt in zip(idx, prompts, strict=True):
        # the prompt's class: the held-out caption sharing the most of its words (a prompt
        # "a handwritten digit five, sample 12" is of class "a handwritten digit five")
        pw = _words(str(prompt))
        target = max(classes, key=lambda c: len(pw & words[c]) / len(pw | words[c]))
        votes = Counter(_first_caption(captions[int(j)]) for j in row).most_common()
        best = votes[0][1]
        # a tie counts as a hit only when the class is among the tied captions, weighted
        tied = [c for c, n in votes if n == best]
        hits.append((target in tied) / len(tied))
    return float(np.mean(hits))


def _words(text: str) -> set[str]:
    return set(text.lower().replace(",", " ").split())


def _first_caption(caption) -> str | None:
    """A row's caption as one string: the first of a caption list (``mc``), else itself."""
    if isinstance(caption, list | tuple):
        return caption[0] if caption else None
    return caption
