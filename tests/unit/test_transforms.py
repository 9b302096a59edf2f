"""Unit tests for mpltools.data.transforms / randaugment (weak, strong, eval views; RandAugment ops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mpltools.data import randaugment as ra
from mpltools.data.transforms import (
    NORMALISATION,
    RANDAUGMENT_OPS,
    AugmentSpec,
    apply_op,
    eval_view,
    op_level,
    strong,
    to_float_batch,
    weak,
    weak_and_strong,
)

KINDS = ("cifar", "imagenet", "none")


def _img(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _views(img, spec, seed=0):
    rng = np.random.default_rng(seed)
    w = weak(img, spec, rng)
    s = strong(img, spec, rng)
    ws = weak_and_strong(img, spec, rng)
    return {"weak": w, "strong": s, "pair_weak": ws[0], "pair_strong": ws[1], "eval": eval_view(img, spec)}


# --------------------------------------------------------------------------- shapes and dtypes


@pytest.mark.parametrize("kind", ("cifar", "imagenet"))
@pytest.mark.parametrize("size", (8, 32))
@pytest.mark.parametrize("channels", (1, 3))
@pytest.mark.parametrize("as_pil", (False, True))
def test_output_shape_and_dtype(kind, size, channels, as_pil):
    shape = (size, size) if channels == 1 else (size, size, 3)
    img = _img(shape)
    if as_pil:
        img = Image.fromarray(img)
    for name, out in _views(img, AugmentSpec(kind=kind, image_size=size)).items():
        assert out.shape == (size, size, channels), name
        assert out.dtype == np.uint8, name
        assert out.flags.c_contiguous and out.flags.writeable, name


@pytest.mark.parametrize("kind", ("cifar", "imagenet"))
@pytest.mark.parametrize("shape", ((48, 64, 3), (75, 50), (40, 30, 1)))
def test_non_square_input_to_32(kind, shape):
    channels = 1 if len(shape) == 2 else shape[2]
    for name, out in _views(_img(shape), AugmentSpec(kind=kind, image_size=32)).items():
        assert out.shape == (32, 32, channels), name
        assert out.dtype == np.uint8


def test_imagenet_224_from_large_input():
    spec = AugmentSpec(kind="imagenet", image_size=224, magnitude=17)
    for name, out in _views(_img((300, 400, 3)), spec).items():
        assert out.shape == (224, 224, 3), name


def test_input_normalisation():
    spec = AugmentSpec(image_size=8)
    rgba = _img((8, 8, 4))
    assert eval_view(rgba, spec).shape == (8, 8, 3)
    np.testing.assert_array_equal(eval_view(rgba, spec), rgba[:, :, :3])
    as_float = _img((8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(eval_view(as_float, spec), as_float.astype(np.uint8))
    assert eval_view(Image.new("P", (8, 8)), spec).shape == (8, 8, 3)
    assert eval_view(Image.new("LA", (8, 8)), spec).shape == (8, 8, 1)
    with pytest.raises(ValueError):
        eval_view(np.zeros((8, 8, 5), np.uint8), spec)
    with pytest.raises(ValueError):
        AugmentSpec(kind="mnist")


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_bytes(kind):
    size = 224 if kind == "imagenet" else 32
    img = _img((260, 300, 3) if kind == "imagenet" else (32, 32, 3))
    spec = AugmentSpec(kind=kind, image_size=size)
    a, b = _views(img, spec, seed=123), _views(img, spec, seed=123)
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize("kind", ("cifar", "imagenet"))
def test_different_seeds_different_strong_views(kind):
    img = _img((32, 32, 3))
    spec = AugmentSpec(kind=kind, image_size=32)
    outs = {strong(img, spec, np.random.default_rng(seed)).tobytes() for seed in range(8)}
    assert len(outs) == 8


@pytest.mark.parametrize("kind", ("cifar", "imagenet"))
def test_weak_and_strong_equals_separate_calls(kind):
    img = _img((40, 48, 3))
    spec = AugmentSpec(kind=kind, image_size=32)
    for seed in range(10):
        w, s = weak_and_strong(img, spec, np.random.default_rng(seed))
        np.testing.assert_array_equal(w, weak(img, spec, np.random.default_rng(seed)))
        np.testing.assert_array_equal(s, strong(img, spec, np.random.default_rng(seed)))


@pytest.mark.parametrize("kind", ("cifar", "imagenet"))
def test_fixed_number_of_draws_per_image(kind):
    """The generator advances by a fixed count whatever the image and the ops: resumable streams."""
    spec = AugmentSpec(kind=kind, image_size=32)
    ra_draws = 1 + ra.UNIFORMS_PER_LAYER * spec.num_layers
    # cifar: jitter (3) + RandAugment + cutout (2) + jitter (3); imagenet: crop (41) + flip + RandAugment
    expected = {"cifar": (3, 3 + ra_draws + 5), "imagenet": (41, 41 + 1 + ra_draws)}[kind]
    for seed in range(20):
        for view, n in ((weak, expected[0]), (strong, expected[1])):
            rng, ref = np.random.default_rng(seed), np.random.default_rng(seed)
            view(_img((32, 40, 3), seed=seed), spec, rng)
            ref.random(n)
            assert rng.bit_generator.state == ref.bit_generator.state, (view.__name__, seed)


def test_cifar_strong_is_built_on_the_weak_view():
    from mpltools.data.transforms import _cifar_strong_from_weak

    img, spec = _img((32, 32, 3)), AugmentSpec()
    rng = np.random.default_rng(3)
    w, s = weak_and_strong(img, spec, rng)
    rng = np.random.default_rng(3)
    w2 = weak(img, spec, rng)
    np.testing.assert_array_equal(w, w2)
    np.testing.assert_array_equal(s, _cifar_strong_from_weak(w2, spec, rng, return_ops=False))


# --------------------------------------------------------------------------- per-image op choice


def test_ops_are_chosen_per_image():
    spec = AugmentSpec(image_size=8)
    rng = np.random.default_rng(0)
    imgs = [_img((8, 8, 3), seed=i) for i in range(200)]
    plans = [strong(x, spec, rng, return_ops=True)[1] for x in imgs]
    assert all(len(p) == spec.num_layers for p in plans)
    assert len({tuple(p) for p in plans}) > 50
    chosen = [name for p in plans for name, _ in p]
    counts = {name: chosen.count(name) for name in RANDAUGMENT_OPS}
    assert set(counts) == set(RANDAUGMENT_OPS)
    assert min(counts.values()) > 0.4 * len(chosen) / 15  # roughly uniform over the 15 ops
    applied = np.mean([a for p in plans for _, a in p])
    assert 0.4 < applied < 0.6  # E[p] = 0.5 with p ~ U(0.2, 0.8)


def test_apply_probability_is_shared_within_an_image():
    # With p ~ U(0.2, 0.8) drawn once per image, the layers' coins are positively correlated.
    spec = AugmentSpec(image_size=8, num_layers=8)
    rng = np.random.default_rng(1)
    img = Image.fromarray(_img((8, 8, 3)))
    fracs = [np.mean([a for _, a in ra.rand_augment(img, spec, rng, return_ops=True)[1]]) for _ in range(400)]
    assert np.var(fracs) > 1.5 * 0.25 / 8  # more than independent coins with p = 0.5 would give


def test_randaugment_op_list():
    assert len(RANDAUGMENT_OPS) == 15
    assert "Identity" not in RANDAUGMENT_OPS and "SolarizeAdd" not in RANDAUGMENT_OPS


# --------------------------------------------------------------------------- individual ops


def _apply(arr, name, magnitude=16.0, spec=None, seed=0):
    spec = spec or AugmentSpec()
    im = Image.fromarray(arr)
    out = apply_op(im, name, magnitude, spec, np.random.default_rng(seed))
    assert out.size == im.size and out.mode == im.mode
    return np.asarray(out)


def test_levels_at_m16_and_m17():
    cifar, inet = AugmentSpec(), AugmentSpec(kind="imagenet", image_size=224)
    assert op_level("Rotate", 16, cifar) == pytest.approx(48.0)
    assert op_level("ShearX", 16, cifar) == pytest.approx(0.48)
    assert op_level("TranslateY", 16, cifar) == pytest.approx(6.4)
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):
        assert op_level(name, 16, cifar) == pytest.approx(2.98)
        assert op_level(name, 17, cifar) == pytest.approx(3.16)
    assert op_level("Posterize", 16, cifar) == 6
    assert op_level("Posterize", 30, cifar) == 8 and op_level("Posterize", 1, cifar) == 1
    assert op_level("Solarize", 16, cifar) == 153  # int(409.6) = 409 wrapped to uint8
    assert op_level("Solarize", 17, cifar) == 179
    assert op_level("Cutout", 16, cifar) == 6  # 12x12 square on 32x32
    assert op_level("TranslateX", 17, inet) == pytest.approx(170.0)
    assert op_level("Cutout", 17, inet) == 68  # 136x136
    assert AugmentSpec(image_size=8).effective_translate_const == 1.0
    with pytest.raises(ValueError):
        op_level("Identity", 16, cifar)


@pytest.mark.parametrize("shape", ((16, 16, 3), (16, 16)))
def test_invert_posterize_solarize(shape):
    x = _img(shape)
    np.testing.assert_array_equal(_apply(x, "Invert"), 255 - x)
    np.testing.assert_array_equal(_apply(x, "Posterize"), x & 0b11111100)  # 6 bits kept
    np.testing.assert_array_equal(_apply(x, "Posterize", magnitude=5), x & 0b11000000)  # 2 bits
    np.testing.assert_array_equal(_apply(x, "Solarize"), np.where(x < 153, x, 255 - x))
    np.testing.assert_array_equal(_apply(x, "Solarize", magnitude=10), 255 - x)  # threshold 256 -> 0


def test_autocontrast_and_equalize():
    x = np.clip(_img((16, 16, 3)) // 4 + 100, 0, 255).astype(np.uint8)  # values 100..163
    out = _apply(x, "AutoContrast")
    assert out.reshape(-1, 3).min(0).tolist() == [0, 0, 0]
    assert out.reshape(-1, 3).max(0).tolist() == [255, 255, 255]
    flat = np.full((8, 8), 77, np.uint8)
    np.testing.assert_array_equal(_apply(flat, "AutoContrast"), flat)
    np.testing.assert_array_equal(_apply(flat, "Equalize"), flat)
    eq = _apply(x, "Equalize")
    assert eq.max() > 200 and eq.min() < 20  # histogram spread over the full range


@pytest.mark.parametrize("shape", ((32, 32, 3), (32, 32)))
def test_rotate_and_shear_fill_128(shape):
    x = np.full(shape, 200, np.uint8)
    for name in ("Rotate", "ShearX", "ShearY"):
        for seed in range(4):  # both signs
            out = _apply(x, name, seed=seed)
            assert set(np.unique(out).tolist()) == {128, 200}, name
    rot = _apply(x, "Rotate")
    assert (rot[0, 0] == 128).all() and (rot[16, 16] == 200).all()  # corners uncovered at 48 deg


@pytest.mark.parametrize("name,axis", (("TranslateX", 1), ("TranslateY", 0)))
def test_translate_fill_128(name, axis):
    x = np.full((32, 32, 3), 50, np.uint8)
    signs = set()
    for seed in range(8):
        out = _apply(x, name, seed=seed)
        filled = (out == 128).all(axis=(1 - axis, 2))  # lines entirely 128 across the other axis
        assert set(np.unique(out).tolist()) == {50, 128}
        n = int(filled.sum())
        assert n in (6, 7)  # 6.4 px
        first = bool(filled[0])
        signs.add(first)
        expected = np.zeros(32, bool)
        expected[:n] = first
        expected[32 - n :] = not first
        np.testing.assert_array_equal(filled, expected)
    assert signs == {True, False}


def test_translate_moves_content():
    x = _img((32, 32, 3))
    for seed in range(6):
        out = _apply(x, "TranslateX", seed=seed)
        filled = (out == 128).all(axis=(0, 2))
        n = int(filled.sum())  # 6 columns for a 6.4 px shift with nearest sampling
        assert n == 6
        if filled[0]:
            np.testing.assert_array_equal(out[:, n:], x[:, : 32 - n])
        else:
            np.testing.assert_array_equal(out[:, : 32 - n], x[:, n:])


def test_cutout_op_square_of_128():
    x = np.full((32, 32, 3), 40, np.uint8)
    full = 0
    for seed in range(40):
        out = _apply(x, "Cutout", seed=seed)
        mask = (out == 128).all(axis=2)
        assert set(np.unique(out).tolist()) <= {40, 128}
        rows, cols = np.where(mask.any(1))[0], np.where(mask.any(0))[0]
        assert len(rows) <= 12 and len(cols) <= 12
        assert mask.sum() == len(rows) * len(cols)  # a (clipped) rectangle
        full += mask.sum() == 144
    assert full > 0
    im = ra.cutout(Image.fromarray(x), 6, 0.5, 0.5, 128)  # centre (16, 16)
    mask = (np.asarray(im) == 128).all(axis=2)
    assert mask[10:22, 10:22].all() and mask.sum() == 144


def test_cifar_extra_cutout_is_16x16():
    x = np.full((32, 32, 3), 40, np.uint8)
    mask = (np.asarray(ra.cutout(Image.fromarray(x), 32 // 4, 0.5, 0.5, 128)) == 128).all(axis=2)
    assert mask[8:24, 8:24].all() and mask.sum() == 256


@pytest.mark.parametrize("shape", ((16, 16, 3), (16, 16)))
def test_enhancement_ops(shape):
    x = np.clip(_img(shape).astype(int) // 2 + 64, 0, 255).astype(np.uint8)  # 64..191
    brighter = _apply(x, "Brightness")
    np.testing.assert_array_equal(brighter, np.clip(np.floor(x * 2.98), 0, 255).astype(np.uint8))
    _apply(x, "Contrast")
    _apply(x, "Sharpness")
    color = _apply(x, "Color")
    if x.ndim == 2:
        np.testing.assert_array_equal(color, x)  # grey images have no colour to enhance
    grey = np.repeat(np.full((8, 8, 1), 90, np.uint8), 3, axis=2)
    np.testing.assert_array_equal(_apply(grey, "Color"), grey)


@pytest.mark.parametrize("name", RANDAUGMENT_OPS)
@pytest.mark.parametrize("shape", ((8, 8), (8, 8, 3), (40, 24, 3)))
def test_every_op_on_every_mode(name, shape):
    out = _apply(_img(shape), name, magnitude=16)
    assert out.shape == shape and out.dtype == np.uint8


# --------------------------------------------------------------------------- weak (CIFAR)


def _find_shift(out, x, fill, pad):
    """Return (flipped, dy, dx) such that out is x shifted (and maybe flipped) with `fill` padding."""
    h, w = x.shape[:2]
    for flipped in (False, True):
        src = x[:, ::-1] if flipped else x
        for dy in range(-pad, pad + 1):
            for dx in range(-pad, pad + 1):
                ref = np.full_like(x, fill)
                ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
                ref[ys, xs] = src[max(0, dy) : min(h, h + dy), max(0, dx) : min(w, w + dx)]
                if np.array_equal(ref, out):
                    return flipped, dy, dx
    return None


def test_weak_cifar_constant_image():
    x = np.full((32, 32, 3), 7, np.uint8)
    rng = np.random.default_rng(0)
    saw_padding = False
    for _ in range(30):
        out = weak(x, AugmentSpec(), rng)
        assert set(np.unique(out).tolist()) <= {7, 128}
        border = (out == 128).all(axis=2)
        assert (out[4:28, 4:28] == 7).all()  # at most 4 px of padding on any side
        saw_padding |= bool(border.any())
    assert saw_padding


def test_weak_cifar_is_shifted_flipped_copy():
    x = _img((32, 32, 3))
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(40):
        found = _find_shift(weak(x, AugmentSpec(), rng), x, 128, 4)
        assert found is not None
        seen.add(found)
    assert {f for f, _, _ in seen} == {False, True} and len(seen) > 20
    no_flip = AugmentSpec(flip=False)
    for _ in range(10):
        assert _find_shift(weak(x, no_flip, rng), x, 128, 4)[0] is False


def test_weak_cifar_grayscale_8x8_pads_one_pixel():
    x = _img((8, 8), seed=5)
    rng = np.random.default_rng(2)
    for _ in range(20):
        out = weak(x, AugmentSpec(image_size=8, flip=False), rng)
        assert _find_shift(out, x[:, :, None], 128, 1) is not None


def test_imagenet_crop_box_statistics():
    from mpltools.data.transforms import _CROP_UNIFORMS, _center_crop_box, _sample_crop_box

    rng = np.random.default_rng(0)
    W, H = 500, 375
    fracs, centre = [], _center_crop_box(W, H)
    for _ in range(500):
        l, t, r, b = _sample_crop_box(W, H, rng.random(_CROP_UNIFORMS))
        assert 0 <= l < r <= W and 0 <= t < b <= H
        if (l, t, r, b) != centre:
            assert 0.1 <= (r - l) * (b - t) / (W * H) <= 1.0
            assert 0.70 <= (r - l) / (b - t) <= 1.40
        fracs.append((r - l) * (b - t) / (W * H))
    assert min(fracs) < 0.2 and max(fracs) > 0.8
    assert centre == (86, 24, 86 + 328, 24 + 328)  # int(0.875 * 375) = 328, offsets (d + 1) // 2


# --------------------------------------------------------------------------- eval and none


def test_eval_view_cifar_identity_and_deterministic():
    x = _img((32, 32, 3))
    spec = AugmentSpec()
    out = eval_view(x, spec)
    np.testing.assert_array_equal(out, x)
    assert out is not x and np.shares_memory(out, x) is False
    g = _img((32, 32))
    np.testing.assert_array_equal(eval_view(g, spec), g[:, :, None])
    big = _img((64, 48, 3))
    assert eval_view(big, spec).tobytes() == eval_view(big, spec).tobytes()


def test_eval_view_imagenet_centre_crop():
    x = _img((300, 400, 3))
    spec = AugmentSpec(kind="imagenet", image_size=224)
    a, b = eval_view(x, spec), eval_view(Image.fromarray(x), spec)
    np.testing.assert_array_equal(a, b)
    crop = int(0.875 * 300)  # 262
    top, left = (300 - crop + 1) // 2, (400 - crop + 1) // 2
    ref = np.asarray(Image.fromarray(x[top : top + crop, left : left + crop]).resize((224, 224), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(a, ref)


def test_kind_none_is_identity():
    spec = AugmentSpec(kind="none")
    rng = np.random.default_rng(0)
    for x in (_img((8, 8, 3)), _img((5, 7, 1))):
        for name, out in _views(x, spec).items():
            np.testing.assert_array_equal(out, x, err_msg=name)
    g = _img((6, 6))
    np.testing.assert_array_equal(strong(g, spec, rng), g[:, :, None])
    v = np.array([0.25, -1.5], np.float32)  # 2-D vector data passes through untouched
    for out in (weak(v, spec, rng), strong(v, spec, rng), eval_view(v, spec), *weak_and_strong(v, spec, rng)):
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, v)


# --------------------------------------------------------------------------- to_float_batch


def test_to_float_batch_matches_hand_computation():
    x = torch.from_numpy(_img((4, 5, 6, 3)))
    mean, std = NORMALISATION["cifar10"]
    out = to_float_batch(x, mean, std)
    assert out.shape == (4, 3, 5, 6) and out.dtype == torch.float32 and out.is_contiguous()
    for c in range(3):
        ref = (x[..., c].double() / 255.0 - mean[c]) / std[c]
        torch.testing.assert_close(out[:, c].double(), ref, rtol=1e-5, atol=1e-5)
    assert out[0, 1, 2, 3].item() == pytest.approx((x[0, 2, 3, 1].item() / 255 - mean[1]) / std[1], abs=1e-5)


def test_to_float_batch_grayscale_and_errors():
    g = torch.from_numpy(_img((2, 4, 4)))
    out = to_float_batch(g, *NORMALISATION["none"])
    torch.testing.assert_close(out[:, 0], g.float() / 255.0)
    out1 = to_float_batch(g.unsqueeze(-1), (0.5,), (0.25,))
    torch.testing.assert_close(out1[:, 0], (g.float() / 255.0 - 0.5) / 0.25)
    with pytest.raises(ValueError):
        to_float_batch(g.unsqueeze(-1), NORMALISATION["cifar10"][0], NORMALISATION["cifar10"][1])
    with pytest.raises(TypeError):
        to_float_batch(g.float(), (0.0,), (1.0,))


def test_normalisation_table():
    assert set(NORMALISATION) >= {"cifar10", "cifar100", "svhn", "imagenet", "none"}
    for name, (mean, std) in NORMALISATION.items():
        assert len(mean) == len(std) and len(mean) in (1, 3)
        assert all(0.0 <= m <= 1.0 for m in mean) and all(0.0 < s <= 1.0 for s in std), name
    assert NORMALISATION["cifar10"][0][0] == pytest.approx(0.4914, abs=1e-4)
    assert NORMALISATION["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_float_batch_on_cuda():
    x = torch.from_numpy(_img((2, 4, 4, 3)))
    mean, std = NORMALISATION["imagenet"]
    out = to_float_batch(x.cuda(), mean, std)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), to_float_batch(x, mean, std))
