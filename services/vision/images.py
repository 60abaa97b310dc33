"""Still images: safe decoding, dynamic tiling (docs/MODEL.md#vision-tiling) and CLIP/ImageNet normalisation.

Decoding never trusts the input: the format is sniffed from its magic bytes and only the JPEG, PNG, WebP
and GIF plugins of Pillow are allowed; the pixel count is checked from the header, before any pixel is
decoded; every failure is a `MediaInputError` whose `reason` a servicer maps to a status and whose message
tells the user what to change.

Decisions (documented here because they differ from, or are silent in, the reference):
* Transparency is composited on white. The reference's `convert("RGB")` keeps whatever colour hides
  under transparent pixels (often black), which makes e.g. black text on a transparent PNG invisible.
* 16-bit samples (PNG `I;16`, mode `I`) are scaled to 8 bits (÷257); Pillow's own conversion clips them
  at 255, which turns most 16-bit photos white. Mode `F` is taken as [0, 1] floats.
* Extreme shapes are refused by aspect ratio (default limit 200:1, as Qwen2-VL does): tiling can honour
  at most 12:1, and the shortest-edge resize of a 40000×1 frame would allocate a 448×17.9M image.
* EXIF orientation is applied (the reference ignores it); a damaged EXIF block is ignored, not fatal.
* ICC profiles are ignored (as in the reference): pixels are taken as sRGB.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

TILE_SIZE = 448
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Largest grid a caller may ask for: 12 tiles + thumbnail = 3328 LLM positions (the worst case).
MAX_TILES_LIMIT = 12
ALPHA_BACKGROUND = (255, 255, 255)
_BICUBIC = Image.Resampling.BICUBIC
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_SIXTEEN_BIT_TO_EIGHT = 257.0  # 65535 / 255
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})

REASON_EMPTY = "empty"
REASON_CORRUPT = "corrupt"
REASON_UNSUPPORTED = "unsupported"
REASON_TOO_LARGE = "too_large"
REASON_BAD_DIMENSIONS = "bad_dimensions"
REASON_NO_VIDEO_STREAM = "no_video_stream"
MEDIA_ERROR_REASONS = frozenset(
    {
        REASON_EMPTY,
        REASON_CORRUPT,
        REASON_UNSUPPORTED,
        REASON_TOO_LARGE,
        REASON_BAD_DIMENSIONS,
        REASON_NO_VIDEO_STREAM,
    }
)


class MediaInputError(ValueError):
    """Bad user media. `reason` is one of MEDIA_ERROR_REASONS; the message is safe to show to the user."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in MEDIA_ERROR_REASONS:
            raise ValueError(f"unknown media error reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 32 * 1024 * 1024
    # Checked against the header size before decoding; 50 MP of RGB is 150 MB once decoded.
    max_pixels: int = 50_000_000
    max_aspect_ratio: float = 200.0


DEFAULT_IMAGE_LIMITS = ImageLimits()

# --------------------------------------------------------------------------------------------- decoding

_SUPPORTED_NAMES = "JPEG, PNG, WebP or GIF"
# Formats recognised only to name them in the error message.
_KNOWN_UNSUPPORTED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"%PDF", "PDF"),
)
_ISO_BMFF_IMAGE_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


def sniff_image_format(data: bytes) -> str | None:
    """The Pillow format name of a supported image from its magic bytes, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _declared_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR or GIF screen descriptor, read without Pillow; else None."""
    if fmt == "PNG" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if fmt == "GIF" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def _describe_unsupported(data: bytes) -> str:
    for magic, name in _KNOWN_UNSUPPORTED_MAGIC:
        if data.startswith(magic):
            return f"{name} images are not supported; convert it to {_SUPPORTED_NAMES}"
    if data[4:8] == b"ftyp" and data[8:12] in _ISO_BMFF_IMAGE_BRANDS:
        return f"{_ISO_BMFF_IMAGE_BRANDS[data[8:12]]} images are not supported; convert it to {_SUPPORTED_NAMES}"
    return f"the data is not a {_SUPPORTED_NAMES} image"


def check_dimensions(width: int, height: int, limits: ImageLimits = DEFAULT_IMAGE_LIMITS, what: str = "image") -> None:
    """Refuse empty, too large or extremely elongated pictures (from header sizes, before decoding)."""
    if width < 1 or height < 1:
        raise MediaInputError(REASON_BAD_DIMENSIONS, f"the {what} is {width}×{height} pixels; it has no pixels")
    if width * height > limits.max_pixels:
        raise MediaInputError(
            REASON_TOO_LARGE,
            f"the {what} is {width}×{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {limits.max_pixels / 1e6:.1f} megapixels, so downscale it",
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise MediaInputError(
            REASON_BAD_DIMENSIONS,
            f"the {what} is {width}×{height} pixels; its aspect ratio {ratio:.0f}:1 exceeds the "
            f"{limits.max_aspect_ratio:.0f}:1 limit, so crop or pad it",
        )


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_IMAGE_LIMITS) -> Image.Image:
    """Encoded JPEG/PNG/WebP/GIF bytes → an RGB image, EXIF orientation applied (GIF: first frame)."""
    if not data:
        raise MediaInputError(REASON_EMPTY, "the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise MediaInputError(
            REASON_TOO_LARGE,
            f"the image file is {len(data) / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.1f} MiB",
        )
    fmt = sniff_image_format(data)
    if fmt is None:
        raise MediaInputError(REASON_UNSUPPORTED, _describe_unsupported(data))
    try:
        # Only the sniffed plugin may parse the data; opening reads the header only.
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        # Pillow's own guard (> ~179 MP) fires before ours can.
        raise MediaInputError(
            REASON_TOO_LARGE,
            f"the image header declares more than {limits.max_pixels / 1e6:.1f} megapixels; downscale it",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error):
        declared = _declared_size(data, fmt)
        if declared is not None and min(declared) < 1:
            # Pillow refuses a zero-sized header outright; say what is wrong with it.
            check_dimensions(*declared, limits)
        raise MediaInputError(
            REASON_CORRUPT, f"the {fmt} header is damaged or incomplete; re-export or re-upload the image"
        ) from None
    check_dimensions(image.width, image.height, limits)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        detail = "is truncated (the file ends early)" if "truncated" in str(error).lower() else "is damaged"
        raise MediaInputError(REASON_CORRUPT, f"the {fmt} image data {detail}; re-upload the complete file") from None
    return to_rgb(_apply_exif_orientation(image))


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        oriented = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error) as error:
        # A damaged EXIF block must not reject an otherwise valid picture: show it as stored.
        logger.warning("ignoring unreadable EXIF orientation: %s", type(error).__name__)
        return image
    return oriented if oriented is not None else image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB (see the module docstring for alpha and high-bit-depth rules)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        return _wide_grey_to_rgb(image)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        # Pillow converts premultiplied grey (La) only to LA.
        rgba = (image.convert("LA") if mode == "La" else image).convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError:
        raise MediaInputError(REASON_UNSUPPORTED, f"images in colour mode {mode} are not supported") from None


def _wide_grey_to_rgb(image: Image.Image) -> Image.Image:
    samples = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scaled = np.clip(samples, 0.0, 1.0) * 255.0
    else:
        scaled = np.clip(samples, 0.0, 65535.0) / _SIXTEEN_BIT_TO_EIGHT
    grey = np.rint(scaled).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")


# ---------------------------------------------------------------------------------------------- tiling


@dataclass(frozen=True)
class TilingOptions:
    """Dynamic-tiling parameters: real-time serving uses max 1; the HF demo uses 1..12 with thumbnail."""

    min_tiles: int = 1
    max_tiles: int = 1
    use_thumbnail: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_tiles <= self.max_tiles <= MAX_TILES_LIMIT:
            raise ValueError(
                f"need 1 ≤ min_tiles ≤ max_tiles ≤ {MAX_TILES_LIMIT}, got {self.min_tiles}..{self.max_tiles}"
            )


@dataclass(frozen=True)
class TilingPlan:
    columns: int  # tiles across
    rows: int  # tiles down
    thumbnail: bool

    @property
    def grid_tiles(self) -> int:
        return self.columns * self.rows

    @property
    def num_tiles(self) -> int:
        """Tiles sent to the encoder = `<image>` placeholders in the prompt."""
        return self.grid_tiles + int(self.thumbnail)


def choose_grid(
    width: int, height: int, *, min_tiles: int, max_tiles: int, tile_size: int = TILE_SIZE
) -> tuple[int, int]:
    """(columns, rows): closest aspect ratio; on a tie a larger grid wins if the image is big
    (docs/MODEL.md#vision-tiling)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}×{height}")
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 ≤ min_tiles ≤ max_tiles, got {min_tiles}..{max_tiles}")
    # Built and sorted exactly like the reference (a set in this insertion order, stable sort by i·j) so
    # that same-product candidates keep the reference's order even when min_tiles > 1.
    candidates = sorted(
        {
            (i, j)
            for n in range(min_tiles, max_tiles + 1)
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if min_tiles <= i * j <= max_tiles
        },
        key=lambda grid: grid[0] * grid[1],
    )
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for columns, rows in candidates:
        diff = abs(aspect - columns / rows)
        if diff < best_diff:
            best, best_diff = (columns, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * columns * rows:
            best = (columns, rows)
    return best


def plan_tiles(width: int, height: int, options: TilingOptions, tile_size: int = TILE_SIZE) -> TilingPlan:
    columns, rows = choose_grid(
        width, height, min_tiles=options.min_tiles, max_tiles=options.max_tiles, tile_size=tile_size
    )
    return TilingPlan(columns=columns, rows=rows, thumbnail=options.use_thumbnail and columns * rows != 1)


def split_into_tiles(image: Image.Image, plan: TilingPlan, tile_size: int = TILE_SIZE) -> list[Image.Image]:
    """Resize to the grid (bicubic, aspect distorted), crop row-major, then append the thumbnail."""
    resized = image.resize((tile_size * plan.columns, tile_size * plan.rows), _BICUBIC)
    tiles = []
    for index in range(plan.grid_tiles):
        left, top = (index % plan.columns) * tile_size, (index // plan.columns) * tile_size
        tiles.append(resized.crop((left, top, left + tile_size, top + tile_size)))
    if plan.thumbnail:
        tiles.append(image.resize((tile_size, tile_size), _BICUBIC))
    return tiles


# ------------------------------------------------------------------------------------------ normalising


def resize_shortest_edge_and_center_crop(image: Image.Image, size: int = TILE_SIZE) -> Image.Image:
    """The CLIP processor's geometry: shortest edge → size (bicubic), centre crop size×size.

    Sizes and offsets follow transformers' rules (long edge floored; crop offset floored), so a 448 tile
    passes through untouched.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short != size:
        new_long = int(size * long / short)
        image = image.resize((size, new_long) if width <= height else (new_long, size), _BICUBIC)
        width, height = image.size
    if (width, height) == (size, size):
        return image
    top, left = (height - size) // 2, (width - size) // 2
    return image.crop((left, top, left + size, top + size))


_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def normalize_tiles(tiles: Sequence[Image.Image], size: int = TILE_SIZE) -> torch.Tensor:
    """RGB tiles → [n, 3, size, size] float32: CLIP geometry, ×1/255, ImageNet mean/std."""
    arrays = []
    for tile in tiles:
        pixels = np.asarray(resize_shortest_edge_and_center_crop(tile, size), dtype=np.uint8)
        # Rescale in float64 then cast, normalise in float32: the transformers processor's arithmetic.
        scaled = (pixels.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
        arrays.append(((scaled - _MEAN) / _STD).transpose(2, 0, 1))
    if not arrays:
        return torch.empty(0, 3, size, size)
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))


# ------------------------------------------------------------------------------------------- one image


@dataclass(frozen=True)
class ImageTiles:
    pixel_values: torch.Tensor  # [plan.num_tiles, 3, 448, 448] float32
    plan: TilingPlan
    width: int  # after EXIF orientation
    height: int


def image_to_tiles(
    data: bytes,
    options: TilingOptions = TilingOptions(),
    limits: ImageLimits = DEFAULT_IMAGE_LIMITS,
) -> ImageTiles:
    """Encoded image bytes → normalised tiles ready for the encoder."""
    image = decode_image(data, limits)
    return tile_image(image, options)


def tile_image(image: Image.Image, options: TilingOptions = TilingOptions()) -> ImageTiles:
    """A decoded RGB image → normalised tiles (dynamic tiling, then normalisation)."""
    plan = plan_tiles(image.width, image.height, options)
    pixel_values = normalize_tiles(split_into_tiles(image, plan))
    return ImageTiles(pixel_values=pixel_values, plan=plan, width=image.width, height=image.height)
