"""A contact sheet of search results: one row per query, the query image then its neighbours.

Each neighbour is a thumbnail labelled with its rank, score and id; a neighbour whose image
cannot be fetched (gone, refused by the fetch policy, a stored URI whose signature was redacted)
is drawn as a grey placeholder that says why. Pillow only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

THUMB_PX = 192
GAP_PX = 8
LABEL_LINES = 3
LINE_PX = 16
FONT_PX = 13
BACKGROUND = (255, 255, 255)
PLACEHOLDER = (222, 222, 222)
QUERY_FRAME = (30, 90, 200)
TEXT = (20, 20, 20)
MUTED = (110, 110, 110)


@dataclass
class Tile:
    """One cell: an image (or ``None`` for a placeholder) and up to three lines of label."""

    image: np.ndarray | None
    lines: Sequence[str]
    reason: str | None = None  # why there is no image (drawn inside the placeholder)
    is_query: bool = False


def sheet_size(rows: int, columns: int, thumb_px: int = THUMB_PX) -> tuple[int, int]:
    """Width and height in pixels of a sheet of ``rows`` rows of ``columns`` tiles."""
    cell_w = thumb_px + GAP_PX
    cell_h = thumb_px + LABEL_LINES * LINE_PX + GAP_PX
    return GAP_PX + columns * cell_w, GAP_PX + rows * cell_h


Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(
    text: str,
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    width: int,
) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap(
    text: str,
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    width: int,
    lines: int,
) -> list[str]:
    out: list[str] = []
    rest = text
    while rest and len(out) < lines:
        cut = len(rest)
        while cut > 1 and draw.textlength(rest[:cut], font=font) > width:
            cut -= 1
        out.append(rest[:cut])
        rest = rest[cut:]
    if rest and out:
        out[-1] = _fit(out[-1] + rest, draw, font, width)
    return out


def _thumbnail(pixels: np.ndarray, thumb_px: int) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(pixels[..., :3]).astype(np.uint8), "RGB")
    image.thumbnail((thumb_px, thumb_px), Image.Resampling.LANCZOS)
    return image


def render(rows: Sequence[Sequence[Tile]], thumb_px: int = THUMB_PX) -> Image.Image:
    """The sheet as an RGB image; every row is as wide as the widest."""
    columns = max((len(r) for r in rows), default=1)
    width, height = sheet_size(len(rows), columns, thumb_px)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(FONT_PX)
    cell_w = thumb_px + GAP_PX
    cell_h = thumb_px + LABEL_LINES * LINE_PX + GAP_PX
    for r, row in enumerate(rows):
        top = GAP_PX + r * cell_h
        for c, tile in enumerate(row):
            left = GAP_PX + c * cell_w
            box = (left, top, left + thumb_px - 1, top + thumb_px - 1)
            if tile.image is not None:
                thumb = _thumbnail(tile.image, thumb_px)
                x = left + (thumb_px - thumb.width) // 2
                y = top + (thumb_px - thumb.height) // 2
                sheet.paste(thumb, (x, y))
            else:
                draw.rectangle(box, fill=PLACEHOLDER)
                lines = _wrap(tile.reason or "no image", draw, font, thumb_px - 12, 5)
                y = top + (thumb_px - len(lines) * LINE_PX) // 2
                for line in lines:
                    draw.text((left + 6, y), line, fill=MUTED, font=font)
                    y += LINE_PX
            if tile.is_query:
                draw.rectangle(box, outline=QUERY_FRAME, width=3)
            y = top + thumb_px + 2
            for line in list(tile.lines)[:LABEL_LINES]:
                draw.text((left, y), _fit(line, draw, font, thumb_px), fill=TEXT, font=font)
                y += LINE_PX
    return sheet


def write(path: Path, rows: Sequence[Sequence[Tile]], thumb_px: int = THUMB_PX) -> Path:
    """Render the sheet and save it as PNG at ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    render(rows, thumb_px).save(path, format="PNG")
    return path
