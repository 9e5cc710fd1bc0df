"""``max_pixels`` is the one pixel limit: Pillow's own bomb check (89.5 MP) never decides first."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from ntt_batch.storage.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image


@pytest.fixture(scope="module")
def png_95mp() -> bytes:
    """10000 × 9500 = 95 MP of one grey: over Pillow's 89.5 MP default, a few hundred KB as PNG."""
    buf = io.BytesIO()
    Image.new("L", (10000, 9500), 77).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def test_95_megapixels_accepted_under_100m_and_refused_at_90m(png_95mp):
    pil_default = Image.MAX_IMAGE_PIXELS
    assert pil_default < 95_000_000 < DEFAULT_MAX_PIXELS  # the case of the issue
    image = decode_image(png_95mp, max_pixels=100_000_000)
    assert image.shape == (9500, 10000, 3) and image[0, 0].tolist() == [77, 77, 77]
    del image
    with pytest.raises(ImageDecodeError, match=r"image is 10000x9500 = 95000000 pixels, over the limit of 90000000"):
        decode_image(png_95mp, max_pixels=90_000_000)
    assert Image.MAX_IMAGE_PIXELS == pil_default  # Pillow's global is left as it was


def test_far_over_the_limit_gives_our_message(png_95mp):
    # Over twice the limit Pillow's open() itself refuses (DecompressionBombError): same message family.
    with pytest.raises(ImageDecodeError, match=r"95000000 pixels, over the limit of 40000000"):
        decode_image(png_95mp, max_pixels=40_000_000)


def test_default_limit_and_small_images_unchanged():
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (1, 2, 3)).save(buf, format="PNG")
    assert decode_image(buf.getvalue()).shape == (20, 30, 3)
    with pytest.raises(ImageDecodeError, match="600 pixels, over the limit of 599"):
        decode_image(buf.getvalue(), max_pixels=599)
