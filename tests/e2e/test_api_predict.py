"""`Model.predict` on what a user has (PIL images, uint8 arrays) gives what `mpl eval` gives on the same images,
and refuses anything else with an MplError (exit_code 2) that states the expected input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mpltools
from tests.e2e.helpers import REPO, mpl

# (recipe, grey?) — digits: 8x8 grey, cifar eval view (no resize at the trained size);
# imagenet_10pct: 40x40 RGB, imagenet eval view (resize + centre crop)
CASES = {"digits": "recipes/tiny/digits.toml", "imagenet_10pct": "recipes/tiny/imagenet_10pct.toml"}


def _data_commands(recipe: str) -> list[str]:
    return [l[4:] for l in (REPO / recipe).read_text().splitlines() if l.startswith("# $ mpl data")]


@pytest.fixture(scope="module", params=list(CASES))
def trained(request, tmp_path_factory):
    """(checkpoint, val shard folder, eval --json result, {key: probabilities} from eval --predictions)."""
    import shlex

    name, recipe = request.param, CASES[request.param]
    root = tmp_path_factory.mktemp(name)
    (root / "recipes").symlink_to(REPO / "recipes")
    for line in _data_commands(recipe):
        mpl(*shlex.split(line)[1:], cwd=root)
    mpl("train", recipe, "--out", "runs/t", "--set", "schedule.steps=3", cwd=root)
    ckpt, val = root / "runs/t/student.safetensors", root / f"data/tiny/{name}/split/val"
    r = mpl("eval", ckpt, "--data", val, "--json", "--predictions", root / "preds", "--batch-size", "7", cwd=root)
    probs = {key: np.load(io.BytesIO(m["npy"]), allow_pickle=False) for key, m in _tar_samples(root / "preds").items()}
    return name, ckpt, val, json.loads(r.stdout), probs


def _tar_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of a shard set, read with the standard library as a user would: {key: {ext: bytes}}."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def _pil_images(val: Path) -> tuple[list[str], list[Image.Image], list[int]]:
    samples = _tar_samples(val)
    keys = sorted(samples)
    images = [Image.open(io.BytesIO(samples[k]["png"])) for k in keys]
    return keys, images, [int(samples[k]["cls"]) for k in keys]


def test_predict_on_pil_images_equals_mpl_eval(trained):
    name, ckpt, val, result, eval_probs = trained
    model = mpltools.load_checkpoint(ckpt)
    keys, images, labels = _pil_images(val)
    assert {im.mode for im in images} == ({"L"} if name == "digits" else {"RGB"})
    probs = model.predict(images)
    assert probs.shape == (len(keys), model.meta.num_classes)
    expected = np.stack([eval_probs[k] for k in keys])
    # float32 sums differ in the last bits between batch sizes (eval ran batches of 7): close, and the same top-1
    np.testing.assert_allclose(probs.numpy(), expected, rtol=0, atol=1e-4)
    assert probs.argmax(1).tolist() == expected.argmax(1).tolist()  # the same top-1 for every sample
    top1 = float(np.mean(probs.argmax(1).numpy() == np.array(labels)))
    assert top1 == pytest.approx(result["top1"], abs=1e-12) and len(keys) == result["num_samples"]
    # the same images as one uint8 N x H x W x C array, and classify's names agree
    arrays = np.stack([np.asarray(im)[..., None] if im.mode == "L" else np.asarray(im) for im in images])
    assert torch.equal(model.predict(arrays), probs) or torch.allclose(model.predict(arrays), probs, atol=1e-6)
    assert [c for c, _ in model.classify(images[:3])] == [model.classes[i] for i in probs.argmax(1)[:3].tolist()]


def test_predict_inputs_are_bit_identical_to_mpl_evals(trained):
    """The input transform itself (eval view, normalisation from the checkpoint) equals `mpl eval`'s, bit for bit."""
    from mpltools.data.loaders import eval_batches, to_model_input
    from mpltools.data.opening import open_shard_set

    name, ckpt, val, _, _ = trained
    model = mpltools.load_checkpoint(ckpt)
    keys, images, _ = _pil_images(val)
    ours = dict(zip(keys, model.inputs(images)))
    spec, norm = model.meta.eval_view()  # what `mpl eval` prepares its inputs with
    seen = 0
    for batch_keys, x, _ in eval_batches(open_shard_set(val), spec, 7, 0, 1):
        for key, row in zip(batch_keys, to_model_input(x, norm, torch.device("cpu"))):
            assert torch.equal(ours[key], row), key
            seen += 1
    assert seen == len(keys)
    if name == "digits":  # at the trained size the eval view is the identity: the input is (pixels/255 - mean)/std
        mean, std = (np.array(norm[i], dtype=np.float32) for i in (0, 1))
        by_hand = (np.asarray(images[0], dtype=np.float32)[None] / 255 - mean[:, None, None]) / std[:, None, None]
        np.testing.assert_allclose(ours[keys[0]].numpy(), by_hand, rtol=1e-6, atol=1e-6)
    else:  # a real (ImageNet) normalisation, so the bit-identity above would catch one that is skipped or wrong
        assert norm[0] != [0.0, 0.0, 0.0] and norm[1] != [1.0, 1.0, 1.0], norm


def test_predict_converts_pil_modes_to_the_checkpoint_channels(trained):
    name, ckpt, val, _, _ = trained
    model = mpltools.load_checkpoint(ckpt)
    _, images, _ = _pil_images(val)
    other = [im.convert("RGB" if name == "digits" else "L") for im in images[:4]]
    got = model.predict(other)
    if name == "digits":  # grey -> RGB -> grey is exact
        assert torch.allclose(got, model.predict(images[:4]), atol=1e-6)
    else:  # a grey photo for an RGB model: replicated to 3 channels
        assert torch.allclose(got, model.predict([im.convert("RGB") for im in other]), atol=1e-6)
    assert model.predict(images[0].convert("RGBA")).shape == (1, model.meta.num_classes)


def test_predict_image_sizes_follow_mpl_eval(trained):
    name, ckpt, val, _, _ = trained
    model = mpltools.load_checkpoint(ckpt)
    _, images, _ = _pil_images(val)
    odd = images[0].resize((57, 33))
    if name == "imagenet_10pct":  # an imagenet eval view resizes and centre-crops any size, as `mpl eval` does
        assert model.predict(odd).shape == (1, model.meta.num_classes)
        return
    with pytest.raises(mpltools.MplError) as exc:
        model.predict(odd)
    assert exc.value.exit_code == 2 and "33x57" in exc.value.message and "8x8" in exc.value.message
    assert "img.resize((8, 8))" in exc.value.message


def _refused(model, x, *fragments):
    with pytest.raises(mpltools.MplError) as exc:
        model.predict(x)
    assert exc.value.exit_code == 2 and exc.value.message.startswith("predict: "), exc.value.message
    for f in fragments:
        assert f in exc.value.message, exc.value.message
    return exc.value.message


def test_wrong_tensors_are_refused_with_the_expected_spec(trained):
    _, ckpt, _, _, _ = trained
    model = mpltools.load_checkpoint(ckpt)
    c, h, w = model.meta.input_shape
    spec = f"float model inputs of shape [{c}, {h}, {w}]"
    assert model.predict(torch.zeros(c, h, w)).shape == (1, model.meta.num_classes)
    assert model.predict(torch.zeros(2, c, h, w, dtype=torch.float64)).shape == (2, model.meta.num_classes)
    _refused(model, torch.zeros(2, c, h + 1, w), f"got float data of shape [2, {c}, {h + 1}, {w}]", spec)
    _refused(model, torch.zeros(2, h, w, c) if c != h else torch.zeros(2, h, w + 1, c), "channels last?")
    _refused(model, torch.zeros(2, c, h, w, dtype=torch.int64), "got int64 data", spec)
    _refused(
        model,
        torch.zeros(c, h, w, dtype=torch.uint8) if c == 3 else torch.zeros(2, 1, h, w, dtype=torch.uint8),
        "channels first?",
    )
    _refused(model, [], "empty list")
    _refused(model, "cat.png", "got a str ('cat.png')", "PIL.Image.open(path)")
    _refused(model, object(), "got a object")
    _refused(model, torch.zeros(0, c, h, w), "shape [0,")
