"""Burned-in text: find it, remove it, prove it is gone (see ``stage``)."""

from __future__ import annotations

from dicomnode.pixels.boxes import Box
from dicomnode.pixels.stage import PixelStage, TextRemainsError

__all__ = ["Box", "PixelStage", "TextRemainsError"]
