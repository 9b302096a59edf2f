"""Each check of a training run runs once: the deprecated `runtime.tensorboard` key is warned about once, by
`mpl train` and by `mpl recipes validate` (both once printed it twice: the tracker check ran twice)."""

from __future__ import annotations

import pytest

from tests.e2e.test_bad_inputs import TWOMOON, cli
from tests.e2e.test_failed_run_cleanup import base  # noqa: F401 - the module's TwoMoon data fixture

WARNING = "runtime.tensorboard = true is deprecated"


@pytest.mark.parametrize("command", [["train"], ["recipes", "validate"]], ids=["train", "validate"])
def test_the_deprecated_tensorboard_key_is_warned_about_once(base, tmp_path, command):  # noqa: F811
    pytest.importorskip("tensorboard")
    once = ["--set", "schedule.steps=1", "--set", "runtime.tensorboard=true", "--out", tmp_path / "run"]
    code, text = cli(*command, TWOMOON, *base, *once)
    assert code == 0, text[-2000:]
    assert text.count(WARNING) == 1, text[-2000:]
