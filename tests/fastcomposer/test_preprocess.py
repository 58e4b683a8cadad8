"""Reference-image preprocessing and base64 decoding."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from lib_freediff.errors import ParamError
from lib_freediff.fastcomposer.model import CLIP_MEAN, CLIP_STD
from lib_freediff.fastcomposer.preprocess import decode_image_b64, preprocess_image, to_pil

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def unnorm(x):
    return x * STD + MEAN


def test_shape_dtype_and_normalisation():
    x = preprocess_image(Image.new("RGB", (64, 64), (255, 128, 0)))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    expect = (torch.tensor([255, 128, 0]) / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[:, 100, 100], expect.float(), rtol=0, atol=1e-6)


def test_black_is_minus_mean_over_std():
    x = preprocess_image(Image.new("RGB", (10, 10), 0))
    torch.testing.assert_close(x, (-MEAN / STD).expand(3, 224, 224).contiguous())


def test_pad_to_square_is_centred_black():
    im = Image.new("RGB", (200, 100), (255, 255, 255))  # wide: pad top and bottom by 50 each
    x = unnorm(preprocess_image(im))
    col = x[:, :, 112]
    assert torch.allclose(col[:, :50], torch.zeros(3, 50), atol=1e-6)       # top quarter black
    assert torch.allclose(col[:, -50:], torch.zeros(3, 50), atol=1e-6)      # bottom quarter black
    assert torch.allclose(col[:, 62:162], torch.ones(3, 100), atol=1e-6)    # middle white
    tall = unnorm(preprocess_image(Image.new("RGB", (100, 200), (255, 255, 255))))
    assert torch.allclose(tall[:, 112, :50], torch.zeros(3, 50), atol=1e-6)
    assert torch.allclose(tall[:, 112, 62:162], torch.ones(3, 100), atol=1e-6)


def test_alpha_blanks_background():
    im = Image.new("RGBA", (100, 100), (255, 255, 255, 0))   # fully transparent white
    im.paste((200, 50, 50, 255), (25, 25, 75, 75))            # opaque red square
    x = unnorm(preprocess_image(im, size=100))
    assert torch.allclose(x[:, 5, 5], torch.zeros(3), atol=1e-6)          # background → black
    torch.testing.assert_close(x[:, 50, 50], torch.tensor([200, 50, 50]) / 255.0, rtol=0, atol=1e-6)
    half = Image.new("RGBA", (4, 4), (255, 255, 255, 128))
    v = unnorm(preprocess_image(half, size=4))[:, 0, 0]
    assert torch.allclose(v, torch.full((3,), 128 / 255.0), atol=2 / 255)  # alpha-weighted


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_other_alpha_modes(mode):
    if mode == "LA":
        im = Image.new("LA", (8, 8), (255, 0))
        im.paste((255, 255), (0, 0, 4, 8))
    else:
        im = Image.new("P", (8, 8), 1)
        im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        im.paste(0, (4, 0, 8, 8))
        im.info["transparency"] = 1  # palette index 1 (white) is transparent
        im.paste(1, (0, 0, 4, 8))
    x = unnorm(preprocess_image(im, size=8))
    if mode == "LA":  # left half opaque white, right half transparent white → black
        assert torch.allclose(x[:, 4, 1], torch.ones(3), atol=1e-6)
        assert torch.allclose(x[:, 4, 6], torch.zeros(3), atol=1e-6)
    else:  # the transparent white half becomes black too
        assert torch.allclose(x[:, 4, 1], torch.zeros(3), atol=1e-6)


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (20, 10), (255, 255, 255))
    im.paste((0, 0, 0), (0, 0, 10, 10))  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW on display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    loaded = Image.open(io.BytesIO(buf.getvalue()))
    x = unnorm(preprocess_image(loaded, size=20))
    # after rotation the image is 10x20 (tall): top half black, bottom half white, padded left/right
    assert x[:, 3, 10].mean() < 0.1 and x[:, 16, 10].mean() > 0.9


def _b64(im, fmt):
    buf = io.BytesIO()
    im.save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_b64_raw_and_data_url(fmt):
    im = Image.new("RGB", (12, 7), (10, 200, 30))
    raw = _b64(im, fmt)
    a = decode_image_b64(raw)
    b = decode_image_b64(f"data:image/{fmt.lower()};base64,{raw}")
    c = decode_image_b64("\n" + raw[:20] + "\n" + raw[20:] + "  ")
    assert a.size == b.size == c.size == (12, 7)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert to_pil(raw).size == (12, 7)


@pytest.mark.parametrize("value, what", [
    ("not base64 at all!!", "base64"),
    (base64.b64encode(b"hello world, not an image").decode(), "PNG or JPEG"),
    ("data:image/png,abc", "base64"),
    ("", "empty"),
    (_b64(Image.new("RGB", (4, 4)), "GIF"), "unsupported format"),
    (base64.b64encode(base64.b64decode(_b64(Image.effect_noise((64, 64), 40).convert("RGB"), "PNG"))[:300]).decode(),
     "the PNG data is truncated or corrupt"),
    (123, "string"),
])
def test_decode_b64_garbage_names_images(value, what):
    with pytest.raises(ParamError) as e:
        decode_image_b64(value, index=1)
    assert e.value.param == "images" and e.value.feature == "FastComposer"
    assert what in str(e.value) and "image 2" in str(e.value)


def test_to_pil_accepts_arrays():
    arr = np.zeros((5, 6, 3), dtype=np.uint8)
    assert to_pil(arr).size == (6, 5)
    with pytest.raises(ParamError):
        to_pil(object())
