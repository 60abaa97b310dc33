"""Safe decoding: every bad input is a precise MediaInputError; every colour mode becomes correct RGB."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from services.vision.images import ImageLimits, MediaInputError, decode_image, image_to_tiles, to_rgb, TilingOptions
from tests.vision.media import encode_image, png_from_header


def _reason(data: bytes, limits: ImageLimits = ImageLimits()) -> MediaInputError:
    with pytest.raises(MediaInputError) as caught:
        decode_image(data, limits)
    return caught.value


def _photo(width: int = 120, height: int = 80) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------ bad input


def test_empty_and_not_an_image() -> None:
    assert _reason(b"").reason == "empty"
    error = _reason(b"hello, I am plain text" * 10)
    assert error.reason == "unsupported" and "JPEG, PNG, WebP or GIF" in str(error)


def test_known_but_unsupported_format_is_named() -> None:
    error = _reason(encode_image(_photo(), "BMP"))
    assert error.reason == "unsupported" and "BMP" in str(error)


def test_corrupt_jpeg_header() -> None:
    data = bytearray(encode_image(_photo(), "JPEG"))
    data[3:60] = bytes(57)  # wipe the marker segments after SOI
    error = _reason(bytes(data))
    assert error.reason == "corrupt" and "JPEG" in str(error)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_truncated_files(fmt: str) -> None:
    data = encode_image(_photo(), fmt)
    error = _reason(data[: len(data) // 2])
    assert error.reason == "corrupt" and "truncated" in str(error)


def test_truncated_webp_is_corrupt() -> None:
    data = encode_image(_photo(), "WEBP")
    assert _reason(data[: len(data) // 2]).reason == "corrupt"


def test_zero_sized_png_header() -> None:
    error = _reason(png_from_header(0, 0))
    assert error.reason == "bad_dimensions" and "0×0" in str(error)


@pytest.mark.parametrize(("width", "height"), [(1, 4000), (40000, 1)])
def test_extreme_aspect_ratios_are_refused(width: int, height: int) -> None:
    error = _reason(png_from_header(width, height))
    assert error.reason == "bad_dimensions" and "aspect ratio" in str(error)


def test_thin_but_sane_images_are_accepted() -> None:
    assert decode_image(png_from_header(1, 100)).size == (1, 100)
    tiles = image_to_tiles(png_from_header(1, 100), TilingOptions(1, 12))
    assert (tiles.plan.columns, tiles.plan.rows) == (1, 12)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = png_from_header(10_000, 10_000, bit_depth=1)  # 100 MP
    assert len(bomb) < 20_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        error = _reason(bomb)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.reason == "too_large" and "megapixels" in str(error)
    assert elapsed < 0.5
    assert peak < 5_000_000  # nothing near the 100 MB a decode would need


def test_header_beyond_pillows_own_limit_is_too_large() -> None:
    assert _reason(png_from_header(20_000, 20_000, bit_depth=1)).reason == "too_large"


def test_configurable_limits() -> None:
    data = encode_image(_photo(), "PNG")
    assert _reason(data, ImageLimits(max_pixels=5000)).reason == "too_large"
    assert _reason(data, ImageLimits(max_bytes=100)).reason == "too_large"


def test_media_error_reasons_are_closed() -> None:
    with pytest.raises(ValueError):
        MediaInputError("oops", "message")


# ------------------------------------------------------------------------------------- modes and EXIF


def _decode_pixel(image: Image.Image, fmt: str, **params: object) -> tuple[int, int, int]:
    decoded = decode_image(encode_image(image, fmt, **params))
    assert decoded.mode == "RGB" and decoded.size == image.size
    return decoded.getpixel((0, 0))


def test_grey_and_bilevel() -> None:
    assert _decode_pixel(Image.new("L", (4, 4), 100), "PNG") == (100, 100, 100)
    assert _decode_pixel(Image.new("1", (4, 4), 1), "PNG") == (255, 255, 255)


def test_alpha_is_composited_on_white() -> None:
    assert _decode_pixel(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG") == (255, 255, 255)
    assert _decode_pixel(Image.new("RGBA", (4, 4), (10, 20, 30, 255)), "PNG") == (10, 20, 30)
    red, green, blue = _decode_pixel(Image.new("RGBA", (4, 4), (200, 0, 0, 128)), "PNG")
    assert abs(red - 228) <= 1 and abs(green - 127) <= 1 and abs(blue - 127) <= 1
    assert _decode_pixel(Image.new("LA", (4, 4), (50, 0)), "PNG") == (255, 255, 255)
    assert _decode_pixel(Image.new("LA", (4, 4), (50, 255)), "PNG") == (50, 50, 50)
    webp = _decode_pixel(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "WEBP", lossless=True)
    assert webp == (255, 255, 255)


def test_palette_with_transparency() -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    image.putpixel((0, 0), 0)
    for fmt in ("PNG", "GIF"):
        decoded = decode_image(encode_image(image, fmt, transparency=0))
        assert decoded.getpixel((0, 0)) == (255, 255, 255), fmt
        assert decoded.getpixel((1, 1)) == (12, 34, 56), fmt


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode_image(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert decode_image(data).getpixel((4, 4)) == (255, 0, 0)


def test_cmyk_jpeg() -> None:
    red, green, blue = _decode_pixel(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100)
    assert red > 245 and green < 10 and blue < 10


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    samples = np.array([[0, 32896, 65535, 1000]], dtype=np.uint16)
    decoded = decode_image(encode_image(Image.fromarray(samples), "PNG"))
    assert [decoded.getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 4]


def test_wide_integer_and_float_modes() -> None:
    as_int = Image.fromarray(np.array([[0, 65535, 70000, -5]], dtype=np.int32))
    assert as_int.mode == "I"
    assert [to_rgb(as_int).getpixel((x, 0))[0] for x in range(4)] == [0, 255, 255, 0]
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0, 3.0]], dtype=np.float32))
    assert as_float.mode == "F"
    assert [to_rgb(as_float).getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 255]


def test_other_modes_convert() -> None:
    for mode in ("YCbCr", "RGBX", "HSV", "LAB", "RGBa", "La", "PA"):
        assert to_rgb(Image.new(mode, (2, 2))).mode == "RGB", mode


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:8, :8] = (255, 0, 0)  # red block top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be turned 90° clockwise for display
    decoded = decode_image(encode_image(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (32, 64)
    red, green, _ = decoded.getpixel((28, 3))  # top-left went to top-right
    assert red > 200 and green < 60
