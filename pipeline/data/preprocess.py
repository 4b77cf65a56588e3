"""The preprocessing a model expects, as plain data, and the one function that applies it.

``normalise`` is the host-side twin of ``pipeline.data.store.normalise_batch`` (the same float32
operations); an export records a
``Preprocessing`` next to the weights, so a model used elsewhere gets its images
exactly as the search scored them. Only numpy and torch are needed to apply it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.errors import InputError


def normalise(images: np.ndarray, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 (0..255) or float ([0, 1]) images -> float32 (N, C, H, W) tensor,
    ``(pixel / 255 - mean) / std`` per channel (uint8), ``(pixel - mean) / std`` (float)."""
    x: np.ndarray = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@dataclass(frozen=True)
class Preprocessing:
    """What turns a picture into the model's input.

    Attributes:
        mean, std: per channel, applied to pixels scaled to [0, 1].
        input_shape: (C, H, W) of one model input.
        channel_order: ``RGB`` (3 channels) or ``L`` (grey, 1 channel); others ``C<n>``.
        resize: side the data loader resized the shorter edge to before a centre crop
            of (H, W) (``imagefolder``); ``None``: images already come at (H, W).
        num_classes: outputs of the model.
        class_names: label index -> name, when the data set names its classes.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]
    channel_order: str
    num_classes: int
    resize: int | None = None
    class_names: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        names = d.get("class_names")
        return cls(
            tuple(d["mean"]),
            tuple(d["std"]),
            tuple(d["input_shape"]),
            d["channel_order"],
            int(d["num_classes"]),
            d.get("resize"),
            tuple(names) if names is not None else None,
        )

    def __call__(self, images: Any) -> torch.Tensor:
        """Images -> normalised float32 batch (N, C, H, W) for the model.

        Accepts a numpy array (H, W, C) or (N, H, W, C), uint8 0..255 or float in [0, 1]
        (grey images may also be (H, W) / (N, H, W)), a PIL image, or a list of PIL images.
        PIL images are converted to ``channel_order`` and, with ``resize`` set, resized
        and centre-cropped as the data loader did.
        """
        c, h, w = self.input_shape
        if _is_pil(images) or (isinstance(images, (list, tuple)) and images and _is_pil(images[0])):
            pics = [images] if _is_pil(images) else list(images)
            images = np.stack([np.asarray(self._fit(p)) for p in pics])
        x = np.asarray(images)
        if x.ndim == 2 or (x.ndim == 3 and c == 1 and x.shape[-1] != 1):
            x = x[..., None]  # grey without a channel axis
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != (h, w, c):
            raise InputError(f"images must have shape (N, {h}, {w}, {c}) or ({h}, {w}, {c}) (height, width, channels), got {x.shape}")
        return normalise(x, self.mean, self.std)

    def _fit(self, pic: Any) -> Any:
        pic = pic.convert(self.channel_order if self.channel_order in ("RGB", "L") else "RGB")
        if self.resize is not None:
            return fit_image(pic, self.resize, self.input_shape[1])
        return pic


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.")


def fit_image(img, size: int, crop: int | None = None):
    """Resize a PIL image's shorter edge to ``size`` and centre-crop it to ``crop`` (default
    ``size``) square: what ``imagefolder`` does to every image, and what an export repeats."""
    from torchvision.transforms import functional as F

    return F.center_crop(F.resize(img, size), crop or size)
