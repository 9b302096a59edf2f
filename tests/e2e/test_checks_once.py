"""Each check of a training run runs once: the deprecated `runtime.tensorboard` key is warned about once, by
`mpl train` and by `mpl recipes validate` (both once printed it twice: the tracker check ran twice)."""

from __future__ import annotations

import pytest

from tests.e2e.test_bad_inputs import TWOMOON, cli, ok

WARNING = "runtime.tensorboard = true is deprecated"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> list[str]:
    pytest.importorskip("tensorboard")
    root = tmp_path_factory.mktemp("once")
    ok("data", "import", "twomoon", "--out", root / "all", "--seed", "0", "--noise", "0.1", "--scale", "20")
    ok("data", "split", root / "all", "--labeled-per-class", "3", "--val-per-class", "5", "--seed", "0", "--out", root / "split")
    return [
        "--set",
        f"data.labeled={root / 'split/labeled'}",
        "--set",
        f"data.unlabeled={root / 'split/unlabeled'}",
        "--set",
        "data.val=",
        "--set",
        "schedule.steps=1",
        "--set",
        "runtime.tensorboard=true",
    ]


@pytest.mark.parametrize("command", [["train"], ["recipes", "validate"]], ids=["train", "validate"])
def test_the_deprecated_tensorboard_key_is_warned_about_once(base, tmp_path, command):
    code, text = cli(*command, TWOMOON, *base, "--out", tmp_path / "run")
    assert code == 0, text[-2000:]
    assert text.count(WARNING) == 1, text[-2000:]
