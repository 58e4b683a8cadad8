import math
import random

import pytest

from lib_freediff.asd.buckets import (
    FAMILY_NATIVE_AREA,
    PAPER_BUCKETS,
    SDXL_BUCKETS,
    Bucket,
    Size,
    bucket_set_for,
    choose_bucket,
    format_bucket_list,
    parse_bucket_list,
    plan_any_size,
    scale_buckets,
)
from lib_freediff.errors import ParamError


def test_paper_buckets_are_the_nine_of_table_5():
    assert len(PAPER_BUCKETS) == 9
    ratios = sorted(round(b.h / b.w, 2) for b in PAPER_BUCKETS)
    assert ratios == [0.5, 0.56, 0.62, 0.75, 1.0, 1.33, 1.6, 1.78, 2.0]
    assert Bucket(576, 1024) in PAPER_BUCKETS and PAPER_BUCKETS[0] == (512, 512)


def test_sdxl_buckets_shape():
    assert SDXL_BUCKETS[0] == (512, 2048) and SDXL_BUCKETS[-1] == (2048, 512)
    assert (1024, 1024) in SDXL_BUCKETS
    for b in SDXL_BUCKETS:
        assert b.h % 64 == 0 and b.w % 64 == 0
        assert 0.9 < b.h * b.w / 1024**2 < 1.1
        assert Bucket(b.w, b.h) in SDXL_BUCKETS  # every ratio has its mirror
    ratios = [b.ratio for b in SDXL_BUCKETS]
    assert ratios == sorted(ratios)


def test_scale_buckets_keeps_paper_set_for_sd1_and_scales_for_sd2():
    assert scale_buckets(PAPER_BUCKETS, 512 * 512) == PAPER_BUCKETS
    sd2 = scale_buckets(PAPER_BUCKETS, 768 * 768)
    assert sd2[0] == (768, 768)
    for a, b in zip(PAPER_BUCKETS, sd2):
        assert b.h % 64 == 0 and b.w % 64 == 0
        assert abs(b.ratio - a.ratio) / a.ratio < 0.08
    sd1_from_xl = scale_buckets(SDXL_BUCKETS, 512 * 512)
    assert (512, 512) in sd1_from_xl and all(b.h % 64 == 0 and b.w % 64 == 0 for b in sd1_from_xl)
    assert len(set(sd1_from_xl)) == len(sd1_from_xl)
    # f = sqrt(400² / (800·400)) ≈ 0.707: 565.7 → 568, 282.8 → 280 (nearest multiples of 8)
    assert scale_buckets([(800, 400)], 400 * 400, multiple=8, source_area=800 * 400) == ((568, 280),)
    with pytest.raises(ParamError) as e:
        scale_buckets(PAPER_BUCKETS, 512 * 512, multiple=12)
    assert e.value.param == "multiple"


def test_bucket_set_for_families_and_custom():
    assert bucket_set_for("sd1", "paper") == PAPER_BUCKETS
    assert bucket_set_for("sd1") == bucket_set_for("sd1", "native") != PAPER_BUCKETS
    assert bucket_set_for("sdxl", "sdxl") == SDXL_BUCKETS
    assert bucket_set_for("sdxl")[0] == (1024, 1024) == bucket_set_for("sdxl", "paper")[0]
    assert bucket_set_for("sd2", "paper")[0] == (768, 768)
    assert bucket_set_for("sd1", "custom", [(512, 768), (768, 512)]) == ((512, 768), (768, 512))
    assert bucket_set_for("sd1", "custom", "768x512, 512x768") == ((512, 768), (768, 512))
    for bad in ([], [(512, 500)], [(0, 512)], [(512,)], [(h, 512) for h in range(8, 8 * 70, 8)], [(512.5, 512)]):
        with pytest.raises(ParamError) as e:
            bucket_set_for("sd1", "custom", bad)
        assert e.value.param == "buckets"
    with pytest.raises(ParamError) as e:
        bucket_set_for("sd3")
    assert e.value.param == "family"
    with pytest.raises(ParamError) as e:
        bucket_set_for("sd1", "wide")
    assert e.value.param == "bucket_set"


def test_text_form_is_width_by_height_and_round_trips():
    b = parse_bucket_list("768x576,512X1024 ;\n 640×640, 768x576")
    assert b == (Bucket(h=576, w=768), Bucket(h=1024, w=512), Bucket(h=640, w=640))
    assert format_bucket_list(b) == "768x576, 512x1024, 640x640"
    assert parse_bucket_list(format_bucket_list(SDXL_BUCKETS)) == SDXL_BUCKETS
    for bad in ("", "512", "512x", "axb", "512x510", "0x512"):
        with pytest.raises(ParamError) as e:
            parse_bucket_list(bad)
        assert e.value.param == "buckets"


def test_choose_bucket_ordinary_and_extreme():
    assert choose_bucket(1920, 1080, PAPER_BUCKETS) == Size(1024, 576)
    assert choose_bucket(1080, 1920, PAPER_BUCKETS) == Size(576, 1024)
    assert choose_bucket(1000, 1000, PAPER_BUCKETS) == Size(512, 512)
    assert choose_bucket(4000, 100, PAPER_BUCKETS) == Size(1024, 512)
    assert choose_bucket(100, 4000, PAPER_BUCKETS) == Size(512, 1024)
    assert choose_bucket(4096, 1024, SDXL_BUCKETS) == Size(2048, 512)
    # r = H/W = 0.6: nearest is 0.625 (640 high × 1024 wide), returned width first.
    assert choose_bucket(1000, 600, PAPER_BUCKETS) == Size(1024, 640)


def test_choose_bucket_ties_are_deterministic():
    # r = 0.875 is exactly halfway between 0.75 (576x768 H×W) and 1.0 (512x512); the target area
    # (800*700) is closer to 768*576 than to 512*512.
    assert choose_bucket(800, 700, PAPER_BUCKETS) == Size(768, 576)
    # A small target at the same ratio prefers the smaller bucket.
    assert choose_bucket(400, 350, PAPER_BUCKETS) == Size(512, 512)
    # Equal ratio distance and equal area: the smaller width wins, whatever the list order.
    for buckets in ([(512, 1024), (1024, 512)], [(1024, 512), (512, 1024)]):
        assert choose_bucket(800, 1000, buckets) == Size(512, 1024)


def test_plan_odd_target_exact_final_size():
    p = plan_any_size(1001, 603, PAPER_BUCKETS, max_pixels=4096 * 4096)
    assert p.final == Size(1001, 603)
    assert p.render == Size(1008, 608) and p.latent == Size(126, 76)
    assert p.final_crop == (3, 2, 1004, 605)
    assert p.bucket == choose_bucket(1001, 603, PAPER_BUCKETS) == Size(1024, 640)
    # covering 1008×608 would scale the bucket down (0.984): the first pass is the bucket shrunk to cover it
    assert p.first_pass == Size(1008, 632) and p.upscale == 1
    assert p.upscaled.w >= 1008 and p.upscaled.h >= 608
    assert abs(p.upscaled.w / p.upscaled.h - 1024 / 640) < 0.01
    l, t, r, b = p.upscale_crop
    assert (r - l, b - t) == (1008, 608) and l >= 0 and t >= 0 and r <= p.upscaled.w and b <= p.upscaled.h
    assert p.tiles == (2, 2) and p.tile_size == Size(504, 304)  # 126×76 latent: 2×2 tiles of 63×38


def test_plan_fit_rule_holds_for_many_targets():
    rng = random.Random(0)
    for _ in range(300):
        w, h = rng.randint(64, 5000), rng.randint(64, 5000)
        p = plan_any_size(w, h, SDXL_BUCKETS, max_pixels=5000 * 5000, tile_px=512)
        assert p.render.w % 8 == 0 and p.render.h % 8 == 0
        assert 0 <= p.render.w - w <= 7 and 0 <= p.render.h - h <= 7
        l, t, r, b = p.final_crop
        assert (r - l, b - t) == (w, h) and l >= 0 and t >= 0 and r <= p.render.w and b <= p.render.h
        assert p.upscaled.w >= p.render.w and p.upscaled.h >= p.render.h
        assert p.upscale == pytest.approx(max(p.render.w / p.first_pass.w, p.render.h / p.first_pass.h))
        assert p.upscale >= 1 and p.first_pass.w <= p.bucket.w and p.first_pass.h <= p.bucket.h
        assert p.first_pass == p.bucket or p.upscale == 1
        assert p.tiles == (math.ceil(p.render.w / 512), math.ceil(p.render.h / 512))
        assert p.tile_size.w <= 512 and p.tile_size.h <= 512
        assert p.tiles[0] * p.tile_size.w - p.render.w < 8 * p.tiles[0]  # spare < 1 latent px a tile
        assert p.tiles[1] * p.tile_size.h - p.render.h < 8 * p.tiles[1]


def test_plan_validates_before_work():
    with pytest.raises(ParamError) as e:
        plan_any_size(63, 512, PAPER_BUCKETS, 10**8)
    assert e.value.param == "width"
    with pytest.raises(ParamError) as e:
        plan_any_size(512, 10, PAPER_BUCKETS, 10**8)
    assert e.value.param == "height"
    with pytest.raises(ParamError) as e:
        plan_any_size(4000, 3000, PAPER_BUCKETS, 2048 * 2048)
    assert e.value.param == "width" and "limit" in str(e.value)
    with pytest.raises(ParamError) as e:
        plan_any_size(3000, 4000, "not buckets", 2048 * 2048)  # size checked before the buckets
    assert e.value.param == "height"
    for bad in (512.5, True, "512", None):
        with pytest.raises(ParamError):
            plan_any_size(bad, 512, PAPER_BUCKETS, 10**8)
    assert plan_any_size(1024.0, 512, PAPER_BUCKETS, 10**8).final == Size(1024, 512)
    with pytest.raises(ParamError) as e:
        plan_any_size(512, 512, [], 10**8)
    assert e.value.param == "buckets"
    with pytest.raises(ParamError) as e:
        plan_any_size(512, 512, PAPER_BUCKETS, 10**8, tile_px=500)
    assert e.value.param == "tile_px"


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_native_buckets_are_the_paper_ratios_at_the_native_area(family):
    native = FAMILY_NATIVE_AREA[family]
    buckets = bucket_set_for(family, "native")
    assert len(buckets) == len(set(buckets)) == 9
    for b, paper in zip(buckets, PAPER_BUCKETS):
        assert abs(b.h * b.w / native - 1) <= 0.10
        assert abs(math.log(b.ratio / paper.ratio)) < 0.05
        assert b.h % 32 == 0 and b.w % 32 == 0
        assert Bucket(b.w, b.h) in buckets  # symmetric
    # the paper's table stays a named choice, unchanged (scaled by its square bucket)
    assert bucket_set_for(family, "paper")[0] == buckets[0]
    assert max(b.h * b.w for b in bucket_set_for(family, "paper")) / native == pytest.approx(2.5, rel=0.1)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_default_first_pass_is_near_native_area_and_never_downscaled(family):
    """Target ratios from 1:4 to 4:1, at the model's native area and larger: the first pass is a bucket within
    ±10 % of the native area, and the second pass scales it up (or keeps it), never down."""
    native = FAMILY_NATIVE_AREA[family]
    buckets = bucket_set_for(family)
    for i in range(-20, 21):
        ratio = 4 ** (i / 20)  # h / w, 1/4 … 4
        for scale in (1.0, 1.5, 2.0, 4.0):
            area = native * scale
            w, h = round(math.sqrt(area / ratio)), round(math.sqrt(area * ratio))
            p = plan_any_size(w, h, buckets, max_pixels=10**9)
            assert p.first_pass == p.bucket, (w, h)
            assert abs(p.first_pass.w * p.first_pass.h / native - 1) <= 0.10, (w, h, p.first_pass)
            assert p.upscale >= 1, (w, h, p.first_pass, p.render)
    # targets smaller than their bucket: the first pass shrinks to just cover them, the second pass keeps it
    for w, h in ((301, 173), (768, 432), (173, 301), (512, 128), (128, 512), (64, 64), (1000, 600), (1280, 720)):
        p = plan_any_size(w, h, buckets, max_pixels=10**9)
        assert p.upscale >= 1 and p.first_pass.w <= p.bucket.w and p.first_pass.h <= p.bucket.h
        assert p.first_pass.w % 8 == 0 and p.first_pass.h % 8 == 0
        if p.first_pass != p.bucket:
            assert p.upscale == 1 and p.first_pass.w >= p.render.w and p.first_pass.h >= p.render.h
            assert p.first_pass.w == p.render.w or p.first_pass.h == p.render.h
