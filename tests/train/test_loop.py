"""The trainer: fixed ambient noise across epochs, exact resume, run-folder data, conditioning."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from curate.errors import DataError, UsageError
from curate.train import loop as loop_mod
from curate.train.data import from_run, from_tensors, positions_to_indices, stream_positions
from curate.train.loop import TrainConfig, Trainer, latest_checkpoint, train


@pytest.fixture(scope="module")
def digits8():
    """16 real 8x8 digits in [-1, 1] with captions."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:16].astype(np.float32) / 8 - 1)[:, None]
    return x, [f"a handwritten digit {t}" for t in d.target[:16]]


def _cfg(**kw):
    base = dict(model="tiny", resolution=8, batch_size=4, steps=4, checkpoint_every=0, lr=1e-3)
    return TrainConfig(**{**base, **kw})


def _record_ambient_calls(monkeypatch):
    calls = []
    real = loop_mod.ambient_loss

    def spy(denoiser, x0, sigma, eta, sigma_n, eps, cond=None, form="ve", **kw):
        calls.append((x0.clone(), sigma.clone(), eta.clone(), sigma_n.clone(), eps.clone()))
        return real(denoiser, x0, sigma, eta, sigma_n, eps, cond, form, **kw)

    monkeypatch.setattr(loop_mod, "ambient_loss", spy)
    return calls


def _by_image(calls, images):
    """For each dataset image, the (eps, eta) it was trained with, in order of use."""
    seen: dict[int, list] = {}
    for x0, _, eta, _, eps in calls:
        for j in range(x0.shape[0]):
            i = int(torch.argmin(((images - x0[j]) ** 2).flatten(1).sum(1)))
            seen.setdefault(i, []).append((eps[j], eta[j]))
    return seen


@pytest.mark.parametrize("mode", ["fixed", "redraw"])
def test_ambient_noise_is_fixed_across_epochs(monkeypatch, digits8, mode):
    """The noisy copy of a sample never changes (fixed); only the redraw control changes it."""
    x, _ = digits8
    data = from_tensors(x[:4])
    calls = _record_ambient_calls(monkeypatch)
    tr = Trainer(data, _cfg(objective="ambient", ambient_noise=mode), quiet=True)
    tr.run(3)  # batch 4 = the whole data: 3 epochs
    seen = _by_image(calls, x[:4])
    assert sorted(seen) == [0, 1, 2, 3]
    for uses in seen.values():
        assert len(uses) == 3
        eps_same = all(torch.equal(uses[0][0], u[0]) for u in uses[1:])
        assert eps_same == (mode == "fixed")
        assert not torch.equal(uses[0][1], uses[1][1])  # the extra noise eta is fresh each use


def test_noisy_only_samples_never_see_low_noise(monkeypatch, digits8):
    x, _ = digits8
    only = np.array([True, False, True, False])
    data = from_tensors(x[:4], sigma_n=np.array([2.0, np.nan, 2.0, np.nan]), noisy_only=only)
    calls = _record_ambient_calls(monkeypatch)
    tr = Trainer(data, _cfg(objective="ambient", sigma_n=0.3, steps=20), quiet=True)
    tr.run(20)
    sig_only, sig_other = [], []
    for x0, sigma, _, sigma_n, _ in calls:
        for j in range(x0.shape[0]):
            i = int(torch.argmin(((x[:4] - x0[j]) ** 2).flatten(1).sum(1)))
            (sig_only if only[i] else sig_other).append(float(sigma[j]))
            assert float(sigma_n[j]) == pytest.approx(2.0 if only[i] else 0.3)
    assert min(sig_only) >= 2.0
    assert min(sig_other) < 2.0


def test_stream_visits_every_sample_once_per_epoch():
    pos = np.concatenate([stream_positions(s, 0, 1, 3) for s in range(4)])  # 12 positions
    idx, epochs = positions_to_indices(pos, 6, seed=0)
    assert sorted(idx[epochs == 0]) == list(range(6))
    assert sorted(idx[epochs == 1]) == list(range(6))
    assert not np.array_equal(idx[:6], idx[6:])  # a new order each epoch


def test_training_lowers_the_loss(digits8):
    x, _ = digits8
    tr = Trainer(from_tensors(x), _cfg(batch_size=16, log_every=1), quiet=True)
    tr.run(30)
    losses = [v for _, v in tr.losses]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_resume_continues_exactly(tmp_path, digits8):
    """Stopping at a checkpoint and resuming gives the same weights as one uninterrupted run."""
    x, _ = digits8
    data = from_tensors(x)
    cfg = _cfg(objective="ambient", steps=4, checkpoint_every=2)
    full = train(data, tmp_path / "full", cfg, quiet=True)
    half = Trainer(data, cfg, quiet=True)
    half.run(2, tmp_path / "half")
    assert latest_checkpoint(tmp_path / "half").name == "step-0000002"
    resumed = train(data, tmp_path / "half", cfg, resume=True, quiet=True)
    from safetensors.torch import load_file

    a = load_file(str(full / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(resumed / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    info = json.loads((resumed / "curate_train.json").read_text())
    assert info["result"]["step"] == 4 and info["config"]["objective"] == "ambient"


def test_resume_errors_name_the_key(tmp_path, digits8):
    x, _ = digits8
    data = from_tensors(x)
    with pytest.raises(UsageError, match="resume: no checkpoint"):
        train(data, tmp_path / "none", _cfg(), resume=True, quiet=True)
    train(data, tmp_path / "m", _cfg(steps=2, checkpoint_every=1), quiet=True)
    with pytest.raises(UsageError, match="the checkpoint has batch_size: 4, now 8"):
        train(data, tmp_path / "m", _cfg(steps=3, batch_size=8), resume=True, quiet=True)
    with pytest.raises(UsageError, match="not empty"):
        train(data, tmp_path / "m", _cfg(), quiet=True)


def test_keeps_only_the_newest_checkpoints(tmp_path, digits8):
    x, _ = digits8
    out = train(
        from_tensors(x),
        tmp_path / "m",
        _cfg(steps=5, checkpoint_every=1, keep_checkpoints=2),
        quiet=True,
    )
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-0000004", "step-0000005"]


def test_caption_lists_and_transform_hook(digits8):
    """A list caption gives one caption per draw; the hook gets (caption, sample_id, epoch)."""
    x, _ = digits8
    data = from_tensors(x[:2], sample_ids=["a", "b"], captions=[["one", "uno", "eins"], "two"])
    calls = []

    def hook(caption, sample_id, epoch):
        calls.append((caption, sample_id, epoch))
        return caption.upper()

    cfg = _cfg(conditioning="caption", text_encoder="tiny-clip", batch_size=2)
    tr = Trainer(data, cfg, caption_transform=hook, quiet=True)
    tr.run(12)
    assert {c for c, s, _ in calls if s == "a"} == {"one", "uno", "eins"}
    assert {c for c, s, _ in calls if s == "b"} == {"two"}
    assert sorted({e for _, _, e in calls}) == list(range(12))
    assert "ONE" in tr.text_encoder._cache or "UNO" in tr.text_encoder._cache


def test_conditional_model_saves_and_samples(tmp_path, digits8):
    from diffusers import DiffusionPipeline

    from curate.core.text import text_encoder_for_model
    from curate.models.denoiser import load_denoiser
    from curate.models.sampling import sample

    x, caps = digits8
    cfg = _cfg(conditioning="caption", text_encoder="tiny-clip", steps=2)
    out = train(from_tensors(x, captions=caps), tmp_path / "m", cfg, quiet=True)
    den = load_denoiser(out)
    assert den.conditional
    DiffusionPipeline.from_pretrained(str(out))  # loadable by diffusers itself
    enc = text_encoder_for_model(den)
    assert enc.name == "tiny-clip"
    imgs = sample(den, 2, steps=2, cond=enc.encode(["a handwritten digit 3"] * 2), progress=False)
    assert imgs.shape == (2, 1, 8, 8)


def test_accelerate_path_runs_on_cpu(digits8):
    x, _ = digits8
    tr = Trainer(from_tensors(x), _cfg(), quiet=True, accelerate=True)
    tr.run(2)
    assert tr.step == 2 and tr.accelerator is not None


def test_config_errors_name_the_key(digits8):
    x, _ = digits8
    with pytest.raises(UsageError, match="need objective: ambient"):
        Trainer(from_tensors(x), _cfg(sigma_n_column="risk"), quiet=True)
    with pytest.raises(UsageError, match="mixed_precision: bf16 needs device: cuda"):
        Trainer(from_tensors(x), _cfg(mixed_precision="bf16"), quiet=True)
    with pytest.raises(UsageError, match="resolution: the data is 8px"):
        Trainer(from_tensors(x), _cfg(resolution=16), quiet=True)


def test_from_run_uses_kept_rows_and_sigma_column(tmp_path):
    import polars as pl

    from curate.io.ingest import IngestConfig, ingest

    run = tmp_path / "run"
    ingest(IngestConfig(name="builtin:digits", limit=12), run, quiet=True)
    table = pl.read_parquet(run / "table.parquet")
    drop = [None] * 12
    drop[3] = "duplicate"
    risk = [None] * 12
    risk[5] = 1.5
    table = table.with_columns(
        pl.Series("dedup_drop", drop, dtype=pl.String),
        pl.Series("risk_sigma", risk, dtype=pl.Float64),
    )
    table.write_parquet(run / "table.parquet")
    data = from_run(run, channels=1, resolution=8, sigma_n_column="risk_sigma")
    ids = table["sample_id"].to_list()
    assert len(data) == 11 and ids[3] not in data.sample_ids
    assert data.images.shape == (11, 1, 8, 8)
    i = data.sample_ids.index(ids[5])
    assert data.sigma_n[i] == 1.5 and np.isnan(data.sigma_n[0])
    assert data.captions[0][0].startswith("a handwritten digit")
    with pytest.raises(UsageError, match="sigma_n_column: 'nope' is not a column"):
        from_run(run, sigma_n_column="nope")
    with pytest.raises(DataError, match="table.parquet"):
        from_run(tmp_path)


def test_grad_accumulation_matches_the_larger_batch(digits8):
    """2 micro-batches of 2 see the same samples and noise as one batch of 4: same update."""
    x, _ = digits8
    data = from_tensors(x)
    a = Trainer(data, _cfg(batch_size=4, ema_decay=0, grad_clip=0), quiet=True)
    b = Trainer(data, _cfg(batch_size=2, grad_accum=2, ema_decay=0, grad_clip=0), quiet=True)
    a.run(1)
    b.run(1)
    for pa, pb in zip(a.bundle.unet.parameters(), b.bundle.unet.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-4)  # Adam step 1 ~ lr = 1e-3


def test_embedding_noise_changes_the_loss_deterministically(digits8):
    """gn at training: a seeded perturbation of the caption embedding, none at lambda 0."""
    x, caps = digits8
    data = from_tensors(x[:4], captions=caps[:4])

    def loss(lam):
        cfg = _cfg(
            conditioning="caption", text_encoder="tiny-clip", batch_size=4, embedding_noise=lam
        )
        return Trainer(data, cfg, quiet=True).micro_loss(0)

    clean, noisy, again = loss(0.0), loss(0.5), loss(0.5)
    assert torch.equal(noisy, again)
    assert not torch.allclose(clean, noisy)
    with pytest.raises(UsageError, match="embedding_noise: must be >= 0"):
        loss(-1.0)


def test_resume_refuses_a_changed_sigma_n(tmp_path, digits8):
    """sigma_n decides the noisy copies: a checkpoint trained at another level is not continued."""
    x, _ = digits8
    data = from_tensors(x)
    cfg = _cfg(objective="ambient", sigma_n=0.5, steps=2, checkpoint_every=1)
    train(data, tmp_path / "m", cfg, quiet=True)
    with pytest.raises(UsageError, match="the checkpoint has sigma_n: 0.5, now 1.0"):
        train(
            data,
            tmp_path / "m",
            _cfg(**{**vars(cfg), "sigma_n": 1.0, "steps": 3}),
            resume=True,
            quiet=True,
        )


def test_auto_resume_continues_only_matching_settings(tmp_path, digits8):
    """resume="auto" (the recipe step's) continues the same settings and restarts changed ones."""
    x, _ = digits8
    data = from_tensors(x)
    base = dict(objective="ambient", steps=2, checkpoint_every=1, keep_checkpoints=5, log_every=1)
    first = train(data, tmp_path / "m", _cfg(**base), quiet=True)
    old = json.loads((first / "curate_train.json").read_text())["result"]["losses"]

    def rerun(**kw):
        out = train(
            data, tmp_path / "m", _cfg(**{**base, **kw}), resume="auto", overwrite=True, quiet=True
        )
        return json.loads((out / "curate_train.json").read_text())["result"]["losses"]

    same = rerun(steps=3)  # continues: steps 1-2 are the first run's
    assert same[:2] == old and len(same) == 3
    changed = rerun(steps=3, sigma_n=1.0)  # starts over with the new noise level
    assert len(changed) == 3 and changed[0] != old[0]


def _spy_encode(trainer):
    """Record the captions the trainer encodes and the clean embeddings it gets back."""
    seen = []
    real = trainer.text_encoder.encode

    def encode(captions):
        emb = real(captions)
        seen.append((list(captions), emb.clone()))
        return emb

    trainer.text_encoder.encode = encode
    return seen


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_caption_dropout_trains_on_the_empty_caption(digits8, p):
    x, caps = digits8
    cfg = _cfg(conditioning="caption", text_encoder="tiny-clip", caption_dropout=p, batch_size=8)
    tr = Trainer(from_tensors(x[:8], captions=caps[:8]), cfg, quiet=True)
    seen = _spy_encode(tr)
    tr.run(8)
    used = [c for caps_, _ in seen for c in caps_]
    empty = sum(c == "" for c in used) / len(used)
    assert len(used) == 64
    assert empty == 0 if p == 0 else 0.3 < empty < 0.7


def test_embedding_noise_leaves_dropped_captions_clean(monkeypatch, digits8):
    """gn perturbs caption embeddings; a dropped caption is the unconditional one, kept exact."""
    x, caps = digits8
    cfg = _cfg(
        conditioning="caption",
        text_encoder="tiny-clip",
        caption_dropout=0.5,
        embedding_noise=1.0,
        batch_size=8,
    )
    tr = Trainer(from_tensors(x[:8], captions=caps[:8]), cfg, quiet=True)
    seen = _spy_encode(tr)
    conds = []
    real = loop_mod.ddpm_loss

    def spy(denoiser, x0, sigma, eta, cond=None):
        conds.append(cond.clone())
        return real(denoiser, x0, sigma, eta, cond)

    monkeypatch.setattr(loop_mod, "ddpm_loss", spy)
    tr.run(4)
    dropped = kept = 0
    for (captions, clean), cond in zip(seen, conds, strict=True):
        for j, cap in enumerate(captions):
            if cap == "":
                assert torch.equal(cond[j], clean[j])
                dropped += 1
            else:
                assert not torch.allclose(cond[j], clean[j])
                kept += 1
    assert dropped and kept


def test_fixed_noise_drawn_per_batch_is_the_preloaded_noise(monkeypatch, digits8):
    """A dataset too large to preload its ambient noise draws it per batch: the same fixed eps."""
    x, _ = digits8
    data = from_tensors(x[:4])
    cfg = _cfg(objective="ambient")

    def eps_by_image():
        calls = _record_ambient_calls(monkeypatch)
        Trainer(data, cfg, quiet=True).run(3)  # 3 epochs
        return _by_image(calls, x[:4])

    pre = eps_by_image()
    monkeypatch.setattr(loop_mod, "PRELOAD_NOISE_NUMEL", 0)
    lazy = eps_by_image()
    assert sorted(lazy) == [0, 1, 2, 3]
    for i, uses in lazy.items():
        assert len(uses) == 3
        for eps, _ in uses:
            assert torch.equal(eps, uses[0][0])  # never redrawn across epochs
            assert torch.equal(eps, pre[i][0][0])  # and the preloaded values


@pytest.mark.parametrize("form,expected", [("auto", "ve"), ("vp", "vp"), ("ve", "ve")])
def test_ambient_form_reaches_the_loss(monkeypatch, digits8, form, expected):
    """The loss is computed in the configured coordinates (auto: ve for a pixel model; the
    latent case, auto -> vp, is tests/models/test_text_presets.py's sd-finetune test)."""
    x, _ = digits8
    forms = []
    real = loop_mod.ambient_loss

    def spy(*args, form="ve", **kw):
        forms.append(form)
        return real(*args, form=form, **kw)

    monkeypatch.setattr(loop_mod, "ambient_loss", spy)
    tr = Trainer(from_tensors(x[:4]), _cfg(objective="ambient", ambient_form=form), quiet=True)
    tr.run(2)
    assert tr.form == expected and forms == [expected, expected]


def test_weight_only_control_trains_without_noisy_copies(monkeypatch, digits8):
    """ambient_noise: weight_only never calls the ambient loss (no noisy copies), weights the
    clean loss above sigma_n, and its loss falls like the others."""
    x, _ = digits8
    calls = _record_ambient_calls(monkeypatch)
    weighted = []
    real = loop_mod.weight_only_loss

    def spy(denoiser, x0, sigma, eta, sigma_n, cond=None, form="ve"):
        weighted.append(sigma_n.clone())
        return real(denoiser, x0, sigma, eta, sigma_n, cond, form)

    monkeypatch.setattr(loop_mod, "weight_only_loss", spy)
    cfg = _cfg(objective="ambient", ambient_noise="weight_only", sigma_n=0.7, steps=3)
    Trainer(from_tensors(x[:4]), cfg, quiet=True).run(3)
    assert calls == [] and len(weighted) == 3
    assert all(torch.all(s == 0.7) for s in weighted)


def test_ambient_weight_reaches_the_loss(monkeypatch, digits8):
    x, _ = digits8
    seen = []
    real = loop_mod.ambient_loss

    def spy(*args, weight="paper", **kw):
        seen.append(weight)
        return real(*args, weight=weight, **kw)

    monkeypatch.setattr(loop_mod, "ambient_loss", spy)
    cfg = _cfg(objective="ambient", ambient_weight="corrected")
    Trainer(from_tensors(x[:4]), cfg, quiet=True).run(2)
    assert seen == ["corrected", "corrected"]


def test_weight_only_with_corrected_weight_is_refused():
    with pytest.raises(UsageError, match="ambient_weight: corrected"):
        _cfg(objective="ambient", ambient_noise="weight_only", ambient_weight="corrected").check()


def test_resume_treats_a_key_the_checkpoint_predates_as_its_default(tmp_path, digits8):
    """A checkpoint written before ambient_weight existed resumes with the default, and
    refuses a non-default value."""
    x, _ = digits8
    cfg = _cfg(objective="ambient", steps=2, checkpoint_every=1)
    train(from_tensors(x[:4]), tmp_path / "m", cfg, quiet=True)
    ckpt = latest_checkpoint(tmp_path / "m")
    state = json.loads((ckpt / "state.json").read_text())
    del state["config"]["ambient_weight"]
    (ckpt / "state.json").write_text(json.dumps(state))
    cfg = cfg.with_default_channels()  # as the trainer saved it
    assert loop_mod.checkpoint_mismatch(ckpt, cfg) is None
    corrected = dataclasses.replace(cfg, ambient_weight="corrected")
    assert "ambient_weight" in loop_mod.checkpoint_mismatch(ckpt, corrected)
