"""The generate job: a model in, a folder of samples out. ``curate sample`` builds its options
from :class:`SampleConfig` and calls :func:`generate_job`; nothing else lists these settings.

``OUT`` gets the PNGs (``000000.png``...), ``samples.jsonl`` (one record per sample: prompt,
seed, sampler, and with AMG its per-sample summary) and ``report/index.html``
(``curate.models.sample_report``); with AMG also ``amg_steps.parquet`` and ``amg.json``
(``curate.guidance.run.write_amg``). Errors name config keys (``prompts/prompts_from: ...``);
the CLI turns them into flags.

Only the standard library and ``curate.core.config`` at module level: the CLI imports the
config to build ``--help``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from curate.core.config import field_problems, setting
from curate.errors import DataError, UsageError


@dataclass(frozen=True)
class SampleConfig:
    """Every setting of a generate job (recorded in ``samples.jsonl`` and the report)."""

    model: str = setting(
        "digits-tiny",
        "A trained model folder (a diffusers pipeline), or digits-tiny shipped with curate.",
        metavar="MODEL_DIR",
    )
    num: int = setting(16, "Number of samples.", min=1)
    steps: int = setting(50, "Sampler steps.", min=1)
    method: Literal["ddim", "ddpm", "euler", "heun"] = setting(
        "ddim",
        "ddim and ddpm step with diffusers' own schedulers from the model's scheduler config "
        "(clip_sample, thresholding, spacing: the images diffusers' pipelines make); euler and "
        "heun (2 model calls per step) integrate the probability-flow ODE, limiting each x0 "
        "prediction as the config's clip_sample / thresholding say.",
    )
    batch_size: int = setting(64, "Samples per batch.", min=1)
    prompts: tuple[str, ...] = setting(
        (), "Prompt (repeatable; cycled over the samples).", multiple=True
    )
    prompts_from: str | None = setting(
        None,
        "Use the captions of a run folder's kept rows as prompts, in order.",
        metavar="RUN_DIR",
        folder=True,
        exists=True,
    )
    caption_transform: str | None = setting(
        None,
        "Rewrite each prompt (e.g. rna, an inference-time mitigation).",
        metavar="mc|rc|rt|cwr|rna",
    )
    embedding_noise: float = setting(
        0.0,
        "gn at inference: lambda * N(0, I) on each prompt embedding (seeded per sample).",
        min=0,
    )
    guidance_scale: float = setting(
        1.0,
        "Classifier-free guidance scale s0 of a text-conditional model (1: none; the model "
        "needs caption dropout in training).",
        min=1.0,
    )
    seed: int = setting(0, "Random seed.")

    def problems(self) -> list[str]:
        """Every problem with these settings, as ``"key: message"`` strings (empty when valid)."""
        out = field_problems(self)
        if self.prompts and self.prompts_from:
            out.append("prompts/prompts_from: give either, not both")
        if self.caption_transform:
            from curate.captions.transforms import check_params

            for problem in check_params(self.caption_transform, None, None):
                key, _, msg = problem.partition(": ")
                out.append(f"{'caption_transform' if key == 'strategy' else key}: {msg}")
        return out

    def check(self) -> None:
        """Raise ``UsageError`` with every problem (see :meth:`problems`)."""
        problems = self.problems()
        if problems:
            raise UsageError("; ".join(problems))


@dataclass(frozen=True)
class GenerateResult:
    out_dir: Path
    records: list[dict[str, Any]]  # samples.jsonl
    amg: Any = None  # the AMG that guided the samples (curate.guidance.amg.AMG), if any
    amg_summary: dict[str, Any] = field(default_factory=dict)  # amg.json


def generate_job(
    config: SampleConfig,
    out_dir: Path | str,
    *,
    amg: Any = None,
    amg_train: str | Path | None = None,
    device: str = "cpu",
    quiet: bool = False,
) -> GenerateResult:
    """Sample ``config.num`` images from ``config.model`` into the samples folder ``out_dir``.

    A text-conditional model needs prompts (``prompts``, cycled, or the kept captions of the run
    folder ``prompts_from``), rewritten by ``caption_transform`` and encoded by the model's own
    text encoder; ``embedding_noise`` and ``guidance_scale`` need such a model. ``amg`` (a
    ``curate.guidance.amg.AMGConfig``) guides the samples away from the kept rows of the run
    folder ``amg_train``. ``out_dir`` is claimed as a samples folder first.
    """
    from curate.core.launch import Launch
    from curate.core.text import text_encoder_for_model
    from curate.io.folders import claim_folder
    from curate.models.denoiser import load_denoiser
    from curate.models.sampling import sample, split_sampler

    config.check()
    # torchrun: every process samples its batches and gets all rows back; process 0 alone
    # writes OUT, the others the same files into a private folder removed at the end
    launch = Launch.from_env(device)
    device = launch.device
    if not launch.main:
        import tempfile

        scratch = tempfile.TemporaryDirectory(prefix=f"curate-sample-rank{launch.rank}-")
        out_dir = Path(scratch.name) / "samples"
    out = Path(out_dir)
    if launch.main:
        claim_folder(out, "samples")
    else:
        out.mkdir(parents=True)
    launch.barrier()
    den = load_denoiser(config.model, device)
    prompts = config.prompts
    if config.prompts_from:
        prompts = tuple(run_prompts(config.prompts_from))
    num, seed = config.num, config.seed
    cond, uncond, encoder = None, None, None
    texts: list[str | None] = [None] * num
    if den.conditional:
        if not prompts:
            raise UsageError(
                f"prompts/prompts_from: {config.model} is text-conditional; give prompts"
            )
        texts = [prompts[i % len(prompts)] for i in range(num)]
        if config.caption_transform:
            from curate.captions.transforms import make_transform

            tf = make_transform(config.caption_transform, seed=seed)
            texts = [tf(t, str(i), 0) for i, t in enumerate(texts)]
        encoder = text_encoder_for_model(den, device)
        cond = encoder.encode(texts)  # (num, L, D)
        if config.guidance_scale != 1.0:
            from curate.core.text import uncond_embedding

            uncond = uncond_embedding(encoder, device)
        if config.embedding_noise > 0:
            from curate.captions.transforms import gaussian_noise_per_sample

            keys = [f"prompt{i}" for i in range(num)]
            cond = gaussian_noise_per_sample(cond, config.embedding_noise, seed, keys, 0)
    elif config.embedding_noise > 0:
        raise UsageError(f"embedding_noise needs a text model; {config.model} is unconditional")
    elif prompts:
        raise UsageError(f"prompts/prompts_from: {config.model} is unconditional; drop them")
    if config.guidance_scale != 1.0 and not den.conditional:
        raise UsageError(f"guidance_scale needs a text model; {config.model} is unconditional")
    guidance = None
    if amg is not None:
        from curate.guidance.run import load_amg

        guidance = load_amg(den, amg_train, amg, device=device, text_encoder=encoder)
    sampler = sample
    if guidance is not None:  # lambdas: auto calibrates on a batch of its own first
        from curate.guidance.run import guided_sampler

        sampler = guided_sampler(sample, guidance)
    sampler = split_sampler(sampler, launch, guidance)
    x = sampler(
        den, num, steps=config.steps, method=config.method, seed=seed, cond=cond,
        batch_size=config.batch_size, device=device, progress=not quiet, uncond=uncond,
        cfg_scale=config.guidance_scale,
    )  # fmt: skip
    if den.vae is not None:
        x = decode_batches(den, x, config.batch_size, device)
    paths = save_images(x, out)
    records = _write_records(out, paths, texts, config, guidance)
    from curate.models.sample_report import sample_settings, write_sample_report

    settings = sample_settings(
        model=config.model, samples=num, sampler=config.method, steps=config.steps,
        guidance_scale=config.guidance_scale, seed=seed,
        caption_transform=config.caption_transform,
        embedding_noise=config.embedding_noise or None,
        amg=None if guidance is None else guidance.config.to_dict(),
    )  # fmt: skip
    title = "curate sample (AMG)" if guidance is not None else "curate sample"
    report = write_sample_report(out, records, settings, title=title)
    summary: dict[str, Any] = {}
    if guidance is not None:
        from curate.guidance.run import write_amg

        write_amg(guidance, out, report=report)
        summary = json.loads((out / "amg.json").read_text())
    launch.barrier()
    if not launch.main:
        scratch.cleanup()
    return GenerateResult(out, records, guidance, summary)


def _write_records(out: Path, paths, texts, config: SampleConfig, guidance) -> list[dict]:
    per_amg = {}
    if guidance is not None:
        per_amg = {r["sample"]: r for r in guidance.samples_frame().iter_rows(named=True)}
    records = []
    with open(out / "samples.jsonl", "w", encoding="utf-8") as fh:
        for i, (p, t) in enumerate(zip(paths, texts, strict=True)):
            rec = {
                "index": i,
                "file": p.name,
                "prompt": t,
                "seed": config.seed,
                "method": config.method,
                "steps": config.steps,
                "guidance_scale": config.guidance_scale,
            }
            if guidance is not None:
                rec.update({k: v for k, v in per_amg[i].items() if k != "sample"})
            fh.write(json.dumps(rec) + "\n")
            records.append(rec)
    return records


def decode_batches(den, x, batch_size: int, device: str):
    """VAE-decode latent samples batch by batch into images in [-1, 1]."""
    import torch

    return torch.cat(
        [den.decode(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    )


def save_images(x, out: Path) -> list[Path]:
    """Write (N, C, H, W) images in [-1, 1] as PNGs ``000000.png``...; returns the paths."""
    from curate.core.images import tensor_to_pil

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(tensor_to_pil(x)):
        path = out / f"{i:06d}.png"
        img.save(path)
        paths.append(path)
    return paths


def run_prompts(run_dir: str | Path) -> list[str]:
    """The captions of a run folder's kept rows, in order (empty ones left out)."""
    from curate.table import TABLE_FILE, kept_rows, read_table, table_exists

    path = Path(run_dir) / TABLE_FILE
    if not table_exists(path):
        raise DataError(f"prompts_from: {run_dir} has no {TABLE_FILE}; give a run folder")
    caps = kept_rows(read_table(path))["caption"].to_list()
    caps = [c for c in caps if c]
    if not caps:
        raise DataError(f"prompts_from: no kept row of {run_dir} has a caption")
    return caps
