"""`CheckpointMeta.eval_view`: the one place a checkpoint's eval view and normalisation are read back."""

import pytest

from mpltools.checkpoint import CheckpointMeta
from mpltools.data.augment_spec import AugmentSpec


def _meta(augment: dict, normalisation: dict) -> CheckpointMeta:
    return CheckpointMeta(
        role="student",
        architecture="mlp",
        architecture_kwargs={},
        num_classes=2,
        input_shape=[3, 8, 8],
        input_spec={"kind": "image", "encoding": "png", "shape": [8, 8, 3]},
        normalisation=normalisation,
        augment=augment,
        classes=["a", "b"],
    )


@pytest.mark.parametrize(
    "augment, expected",
    [
        ({"kind": "imagenet", "image_size": 24, "num_layers": 3}, AugmentSpec(kind="imagenet", image_size=24)),
        ({"kind": "cifar", "image_size": 8}, AugmentSpec(kind="cifar", image_size=8)),
        ({"kind": "none", "image_size": 0}, AugmentSpec(kind="none", image_size=1)),
        ({}, AugmentSpec(kind="none", image_size=1)),
    ],
)
def test_eval_view_keeps_only_kind_and_size(augment, expected):
    view, norm = _meta(augment, {"name": "cifar10", "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}).eval_view()
    assert view == expected
    assert norm == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])


def test_eval_view_survives_the_metadata_round_trip(tmp_path):
    meta = _meta({"kind": "cifar", "image_size": 8}, {"name": "none", "mean": [0.0], "std": [1.0]})
    back = CheckpointMeta.from_metadata(meta.to_metadata(), tmp_path / "x.safetensors")
    assert back.eval_view() == meta.eval_view()
    assert back.eval_view().augment.kind == "cifar" and back.eval_view().normalisation == ([0.0], [1.0])
