"""Removing text from a frame, behind one interface: ``remove(frame, picture, boxes)``.

- ``fill``: a solid box in the colour that displays as black (the default: nothing survives).
- ``telea``: OpenCV's Telea inpainting over the text strokes inside each box (the box where
  strokes cannot be told from the background), on the frame's own values.
- ``diffusion``: Stable Diffusion 2 inpainting (diffusers) on crops around the boxes, on a GPU;
  weights from a local folder.

Every remover returns a new array of the frame's shape and dtype; the verification pass
afterwards decides whether the text is gone.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import cv2
import numpy as np

from dicomnode.errors import ConfigError
from dicomnode.pixels.boxes import Box

log = logging.getLogger(__name__)

__all__ = ["DiffusionRemover", "FillRemover", "Remover", "TeleaRemover", "make_remover"]


class Remover(Protocol):
    name: str

    def remove(
        self, frame: np.ndarray, picture: np.ndarray, boxes: list[Box], fill: np.ndarray
    ) -> np.ndarray: ...


class FillRemover:
    name = "fill"

    def remove(
        self, frame: np.ndarray, picture: np.ndarray, boxes: list[Box], fill: np.ndarray
    ) -> np.ndarray:
        out = frame.copy()
        for box in boxes:
            out[box.y0 : box.y1, box.x0 : box.x1] = fill
        return out


def stroke_mask(picture: np.ndarray, boxes: list[Box], dilate: int = 2) -> np.ndarray:
    """Pixels of text strokes inside the boxes: those that differ from the box's background
    (Otsu on the distance to the median), dilated; the whole box where that fails."""
    grey = cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY) if picture.ndim == 3 else picture
    mask = np.zeros(grey.shape, np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * dilate + 1, 2 * dilate + 1))
    for box in boxes:
        patch = grey[box.y0 : box.y1, box.x0 : box.x1]
        if patch.size == 0:
            continue
        distance = cv2.absdiff(patch, np.full_like(patch, int(np.median(patch))))
        _, strokes = cv2.threshold(distance, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        if not 0.02 < strokes.mean() < 0.7:
            strokes = np.ones_like(strokes)
        grown = np.asarray(cv2.dilate(strokes, kernel), dtype=np.uint8)
        mask[box.y0 : box.y1, box.x0 : box.x1] |= grown
    return mask


class TeleaRemover:
    name = "telea"

    def __init__(self, radius: int = 5) -> None:
        self.radius = radius
        self._fill = FillRemover()

    def remove(
        self, frame: np.ndarray, picture: np.ndarray, boxes: list[Box], fill: np.ndarray
    ) -> np.ndarray:
        if not boxes:
            return frame.copy()
        mask = stroke_mask(picture, boxes)
        if frame.ndim == 3 and frame.dtype == np.uint8:
            return cv2.inpaint(np.ascontiguousarray(frame), mask, self.radius, cv2.INPAINT_TELEA)
        if frame.ndim == 2 and frame.dtype in (np.uint8, np.uint16):
            return cv2.inpaint(np.ascontiguousarray(frame), mask, self.radius, cv2.INPAINT_TELEA)
        if frame.ndim == 2:  # signed or 32-bit values: inpaint in float, round back
            values = cv2.inpaint(frame.astype(np.float32), mask, self.radius, cv2.INPAINT_TELEA)
            info = np.iinfo(frame.dtype) if frame.dtype.kind in "iu" else None
            if info is not None:
                values = np.clip(np.rint(values), info.min, info.max)
            return values.astype(frame.dtype)
        return self._fill.remove(frame, picture, boxes, fill)  # e.g. 16-bit colour


class DiffusionRemover:
    """Stable Diffusion 2 inpainting on crops around the text, batched per frame."""

    name = "diffusion"

    def __init__(
        self,
        model_path: Any,
        *,
        device: str = "auto",
        steps: int = 25,
        crop: int = 512,
        prompt: str = "",
    ) -> None:
        try:
            import torch
            from diffusers import StableDiffusionInpaintPipeline
        except ImportError:
            raise ConfigError(
                "the diffusion remover needs torch and diffusers: "
                "pip install 'dicomnode[diffusion]'"
            ) from None
        if model_path is None:
            raise ConfigError(
                "pixels.remover.model_path must name a local Stable Diffusion "
                "inpainting folder (nothing is downloaded)"
            )
        cuda = torch.cuda.is_available()
        if device == "cuda" and not cuda:
            raise ConfigError("pixels.remover.device is cuda, but torch sees no GPU")
        self.device = "cuda" if cuda and device in ("auto", "cuda") else "cpu"
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.pipe = StableDiffusionInpaintPipeline.from_pretrained(
            str(model_path),
            torch_dtype=dtype,
            local_files_only=True,
            safety_checker=None,
            requires_safety_checker=False,
        ).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps = steps
        self.crop = crop
        self.prompt = prompt
        self._torch = torch

    def remove(
        self, frame: np.ndarray, picture: np.ndarray, boxes: list[Box], fill: np.ndarray
    ) -> np.ndarray:
        from PIL import Image

        if not boxes:
            return frame.copy()
        height, width = picture.shape[:2]
        mask = stroke_mask(picture, boxes, dilate=3)
        windows = [self._window(box, width, height) for box in boxes]
        images = [
            Image.fromarray(picture[w.y0 : w.y1, w.x0 : w.x1]).resize((self.crop, self.crop))
            for w in windows
        ]
        masks = [
            Image.fromarray(mask[w.y0 : w.y1, w.x0 : w.x1] * 255).resize((self.crop, self.crop))
            for w in windows
        ]
        generator = self._torch.Generator(self.device).manual_seed(0)
        result = self.pipe(
            prompt=[self.prompt] * len(images),
            image=images,
            mask_image=masks,
            num_inference_steps=self.steps,
            generator=generator,
            height=self.crop,
            width=self.crop,
            output_type="np",
        ).images
        painted = picture.copy()
        for window, patch in zip(windows, result, strict=True):
            patch8 = (np.clip(patch, 0, 1) * 255).astype(np.uint8)
            patch8 = cv2.resize(patch8, (window.width, window.height), interpolation=cv2.INTER_AREA)
            region = mask[window.y0 : window.y1, window.x0 : window.x1].astype(bool)
            painted[window.y0 : window.y1, window.x0 : window.x1][region] = patch8[region]
        return _back_to_frame(frame, painted, mask)

    def _window(self, box: Box, width: int, height: int) -> Box:
        side = min(max(box.width, box.height) + 64, max(width, height))
        cx, cy = (box.x0 + box.x1) // 2, (box.y0 + box.y1) // 2
        x0 = max(0, min(cx - side // 2, width - side))
        y0 = max(0, min(cy - side // 2, height - side))
        return Box(x0, y0, min(width, x0 + side), min(height, y0 + side))


def _back_to_frame(frame: np.ndarray, painted: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Bring inpainted display values back into the frame's own value range, masked pixels only."""
    out = frame.copy()
    where = mask.astype(bool)
    if frame.ndim == 3 and frame.dtype == np.uint8:
        out[where] = painted[where]
        return out
    grey = cv2.cvtColor(painted, cv2.COLOR_RGB2GRAY).astype(np.float64) / 255.0
    low, high = float(frame.min()), float(frame.max())
    values = low + grey * (high - low)
    if frame.ndim == 3:
        values = np.repeat(values[:, :, None], frame.shape[2], axis=2)
    out[where] = np.rint(values[where]).astype(frame.dtype)
    return out


def make_remover(method: str, **options: Any) -> Remover:
    if method == "fill":
        return FillRemover()
    if method == "telea":
        return TeleaRemover()
    if method == "diffusion":
        return DiffusionRemover(
            options.get("model_path"),
            device=options.get("device", "auto"),
            steps=options.get("steps", 25),
            crop=options.get("crop", 512),
        )
    raise ConfigError(f"unknown remover {method!r}; use fill, telea or diffusion")
