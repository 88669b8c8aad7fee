"""Shared fixtures. Offline by force: an accidental Hub call fails loudly instead of hanging."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per library: torch, numpy's BLAS and faiss oversubscribe shared cores otherwise
# (the suite ran 5x slower with another job beside it). Subprocesses inherit these.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()


@pytest.fixture(scope="session")
def photos_run_template(tmp_path_factory) -> Path:
    """``builtin:photos`` ingested once per session; copy it with ``photos_run`` before mutating."""
    from curate.io.ingest import IngestConfig, ingest

    run = tmp_path_factory.mktemp("photos") / "run"
    ingest(IngestConfig(name="builtin:photos"), run, quiet=True)
    return run


@pytest.fixture
def photos_run(photos_run_template, tmp_path) -> Path:
    """A private copy of the ingested ``builtin:photos`` run folder."""
    dst = tmp_path / "run"
    shutil.copytree(photos_run_template, dst)
    return dst


def save_tiny_open_clip(folder: Path, name: str = "tiny-clip-test", width: int = 32):
    """A randomly initialised open_clip model (both towers) small enough for CPU tests: its
    model-config JSON (registered with open_clip under ``name``) and a state-dict checkpoint."""
    import json

    import open_clip
    import torch

    cfg = {
        "embed_dim": width,
        "vision_cfg": {
            "image_size": 32, "layers": 2, "width": width, "patch_size": 8, "head_width": 16,
        },
        "text_cfg": {
            "context_length": 16, "vocab_size": 49408, "width": width, "heads": 2, "layers": 1,
        },
    }  # fmt: skip
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    ckpt = folder / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return path, ckpt


@pytest.fixture
def tiny_open_clip(tmp_path):
    """``(config_json, checkpoint)`` of a tiny random open_clip model; see ``save_tiny_open_clip``."""
    return save_tiny_open_clip(tmp_path)


@pytest.fixture(scope="session")
def tiny_latent_parts():
    """A tiny random Stable-Diffusion-shaped pair: a text UNet on 4x8x8 latents (16-d text
    tokens) and a VAE for 3x16x16 images, frozen, seeded."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        attention_head_dim=2, norm_num_groups=4,
    ).eval().requires_grad_(False)  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
    ).eval().requires_grad_(False)  # fmt: skip
    return unet, vae


def save_tiny_diffusion_model(path: Path, text_encoder: str | None = None) -> Path:
    """A randomly initialised ``tiny`` preset (1x16x16) saved as a pipeline folder, untrained;
    ``text_encoder`` ("tiny-clip", "minilm") makes it text-conditional."""
    import json

    from curate.models.presets import build_model, save_pipeline

    bundle = build_model("tiny", channels=1, resolution=16, text_encoder=text_encoder)
    save_pipeline(path, bundle.unet, bundle.scheduler_config, text_encoder=bundle.text_encoder)
    spec = bundle.text_encoder.spec() if bundle.text_encoder is not None else None
    (path / "curate_train.json").write_text(json.dumps({"text_encoder": spec}))
    return path


@pytest.fixture
def tiny_model():
    """``save_tiny_diffusion_model`` as a fixture: ``tiny_model(path, text_encoder=None)``."""
    return save_tiny_diffusion_model


def ingest_digits(tmp_path_factory, limit: int) -> Path:
    """The first ``limit`` rows of ``builtin:digits`` ingested into a fresh run folder."""
    from curate.io.ingest import IngestConfig, ingest

    run = tmp_path_factory.mktemp(f"digits{limit}") / "run"
    ingest(IngestConfig(name="builtin:digits", limit=limit), run, quiet=True)
    return run


@pytest.fixture(scope="session")
def digits_runs(tmp_path_factory):
    """``digits_runs(limit)``: a fresh run folder of the first ``limit`` digits (per call)."""
    return lambda limit: ingest_digits(tmp_path_factory, limit)


def protect_recipe_at_test_budget(raw: dict, report_samples: int = 2, proxy_ratio=None) -> dict:
    """A protect recipe (parsed YAML) at a test budget: exact-pixel dedup only, 2 training
    steps, 8 samples of 2 steps per audit, pixel copy features. ``proxy_ratio`` sets the proxy
    audit's ratio threshold (above 1 counts every generation as a copy of its nearest row, so
    an untrained proxy still marks rows)."""
    train = {"steps": 2, "batch_size": 8, "report_samples": report_samples, "checkpoint_every": 0}
    for entry in raw["steps"]:
        ((name, params),) = entry.items()
        if name == "dedup_images":
            params["tiers"] = ["exact"]
        if name == "train":
            params.update(train)
        if name == "audit":
            params.update(num_samples=8, steps=2, batch_size=8)
            if proxy_ratio is not None and params.get("id") == "proxy_audit":
                params["ratio_threshold"] = proxy_ratio
        if name == "compare":
            params.update(copy_features="pixel", gallery=2)
    return raw


@pytest.fixture
def recipe_at_test_budget():
    """``protect_recipe_at_test_budget`` as a fixture."""
    return protect_recipe_at_test_budget


# Files whose tests start several busy processes of their own (torchrun's two workers, a Ray
# node and its actors) are one unit of work: they run one after another on one worker. Two of
# them at once beside another job put five or six busy processes on two cores.
PROCESS_FILES = (
    "tests/scale/test_ray_engine.py",  # 45 s alone: a local Ray, six pipelines
    "tests/scale/test_sample_audit_torchrun.py",  # 26: two torchrun jobs
    "tests/scale/test_train_torchrun.py",  # 23: two torchrun jobs
)
# The slow files, sent first (seconds alone on the 2-core machine, `--durations`): `make test`
# runs each file whole on one of two workers (`--dist loadfile`) in the order collected, so
# the short files fill the gaps at the end instead of one worker finishing a long file alone.
# The process unit (the longest) goes first, then the rest slowest first.
SLOW_FILES = (
    *PROCESS_FILES,
    "tests/reliability/test_sources.py",  # 28
    "tests/reliability/test_lock_kill.py",  # 23: commands killed and raced
    "tests/scale/test_shards.py",  # 21
    "tests/reliability/test_overwrite.py",  # 19
    "tests/dedup/test_dedup_auto.py",  # 17: SSCD on planted copies
    "tests/scale/test_rank_shards.py",  # 16: one torchrun job
    "tests/reliability/test_corpus.py",  # 14: hostile inputs through the CLI
    "tests/dedup/test_dedup_views.py",  # 7
    "tests/models/test_parity.py",  # 6
)


def pytest_collection_modifyitems(config, items):
    """Slow files first, everything else in collection order (a stable sort)."""
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.hookimpl(optionalhook=True)  # an xdist hook: plain pytest has no such hook
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with ``PROCESS_FILES`` as one unit of work."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesAndProcesses(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            name = super()._split_scope(nodeid)
            return "processes" if name in PROCESS_FILES else name

    return FilesAndProcesses(config, log)


def pytest_configure(config):
    """Under pytest-xdist, one fork server (``tests/reliability/zygote.py``) for every worker:
    its imports cost ~12 s of CPU, once instead of once per worker. Started here, in the
    controlling process, before the workers (they find it by ``CURATE_TEST_ZYGOTE``); without
    xdist a test process starts its own on first use."""
    workers = getattr(config.option, "numprocesses", None)
    if (
        hasattr(config, "workerinput")
        or not workers
        or os.environ.get("CURATE_TEST_SUBPROCESS") == "1"
    ):
        return
    from tests.reliability.helpers import ZYGOTE_ENV, start_zygote

    proc, path = start_zygote()
    os.environ[ZYGOTE_ENV] = path
    config._curate_zygote = proc


def pytest_unconfigure(config):
    proc = getattr(config, "_curate_zygote", None)
    if proc is not None:
        from tests.reliability.helpers import stop_zygote

        stop_zygote(proc)
