"""The one check of decoded inputs against the manifest's input spec and its DataLoader carrier."""

from __future__ import annotations

import numpy as np
import pytest

from mpltools.data.codecs import InputSpec, Sample, decode_input, encode_npy, encode_png
from mpltools.data.input_check import channels_of_mode, check_shape, describe
from mpltools.data.shards import ShardError
from mpltools.data.worker_errors import Carrying, WorkerFailure, unwrap
from mpltools.errors import MplError

GREY8 = InputSpec("image", "png", (8, 8, 1))


def png(h, w, c):
    return Sample("k7", "png", encode_png(np.zeros((h, w, c), np.uint8)))


def test_matching_inputs_pass_and_unknown_shapes_are_not_checked():
    assert decode_input(png(8, 8, 1), "s.tar", GREY8).shape == (8, 8, 1)
    assert decode_input(png(16, 16, 3), "s.tar", InputSpec("image", "mixed", None)).shape == (16, 16, 3)
    assert decode_input(png(16, 16, 3), "s.tar").shape == (16, 16, 3)  # no spec: nothing to check against
    vec = Sample("v", "npy", encode_npy(np.zeros(2, np.float32)))
    assert decode_input(vec, "s.tar", InputSpec("vector", "npy", (2,), "float32")).shape == (2,)


@pytest.mark.parametrize("h, w, c, found", [(16, 16, 1, "16x16 grey"), (8, 8, 3, "8x8 RGB"), (8, 9, 1, "8x9 grey")])
def test_a_wrong_size_or_colour_mode_names_shard_key_found_and_expected(h, w, c, found):
    with pytest.raises(ShardError) as err:
        decode_input(png(h, w, c), "d/shard-000003.tar", GREY8)
    msg = err.value.message
    assert err.value.exit_code == 1
    assert msg.startswith("d/shard-000003.tar: sample 'k7'")
    assert f"[{h}, {w}, {c}] ({found})" in msg and "[8, 8, 1] (8x8 grey)" in msg and "mpl data import" in msg


def test_grey_in_an_rgb_set_and_a_vector_of_the_wrong_length():
    with pytest.raises(ShardError, match=r"\[8, 8, 1\] \(8x8 grey\).*declares input shape \[8, 8, 3\] \(8x8 RGB\)"):
        decode_input(png(8, 8, 1), "x.tar", InputSpec("image", "png", (8, 8, 3)))
    vec = Sample("v", "npy", encode_npy(np.zeros(3, np.float32)))
    with pytest.raises(ShardError, match=r"'v' decodes to shape \[3\] \(a vector of 3\).*\[2\] \(a vector of 2\)"):
        decode_input(vec, "x.tar", InputSpec("vector", "npy", (2,), "float32"))


def test_an_undecodable_image_is_named_like_a_wrong_shape():
    data = encode_png(np.zeros((8, 8, 1), np.uint8))
    with pytest.raises(ShardError, match=r"^x.tar: sample 'k' cannot be decoded as png .*corrupt"):
        decode_input(Sample("k", "png", data[: len(data) // 2]), "x.tar", GREY8)


def test_channel_rule_and_descriptions():
    assert [channels_of_mode(m) for m in ("L", "1", "I;16", "RGB", "RGBA", "P", "CMYK")] == [1, 1, 1, 3, 3, 3, 3]
    assert describe((4, 5, 2)) == "[4, 5, 2] (4x5 2-channel)" and describe((2, 3)) == "[2, 3]"
    check_shape(np.zeros((8, 8, 1)), None, "x", "k")  # an unknown spec shape is never an error


def test_the_check_is_a_tuple_comparison_not_a_decode(monkeypatch):
    # The spec shape comes from InputSpec.from_json as a tuple, so the comparison with ndarray.shape is exact.
    spec = InputSpec.from_json({"kind": "image", "encoding": "png", "shape": [8, 8, 1]})
    assert spec.shape == (8, 8, 1) and np.zeros((8, 8, 1)).shape == spec.shape


class _Failing:
    def __iter__(self):
        yield 1
        raise ShardError("s.tar: sample 'k' is bad.")


def test_worker_failure_travels_as_data_and_is_raised_again_with_its_type_and_message(monkeypatch):
    import torch

    with pytest.raises(ShardError):  # in the main process the error is raised as it is
        list(Carrying(_Failing()))
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())  # as in a worker process
    items = list(Carrying(_Failing()))
    assert items == [1, WorkerFailure("ShardError", "s.tar: sample 'k' is bad.", 1)]
    with pytest.raises(ShardError) as err:
        unwrap(items[1])
    assert err.value.message == "s.tar: sample 'k' is bad." and err.value.exit_code == 1
    with pytest.raises(MplError) as err:
        unwrap(WorkerFailure("MplError", "m", 2))
    assert err.value.exit_code == 2 and unwrap(5) == 5
