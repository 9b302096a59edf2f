"""The recipe's [method] keys reach the step: `hyper_from` must carry every key MPLHyper shares with
MethodConfig (method.feedback_sign = -1 was once silently dropped, so the flipped ablation ran the paper's sign)."""

from dataclasses import fields

from mpltools.config import MethodConfig, load_recipe
from mpltools.methods.common import MPLHyper, hyper_from


def test_feedback_sign_reaches_the_step():
    assert hyper_from(load_recipe(None, ["method.feedback_sign=-1"])).feedback_sign == -1.0
    assert hyper_from(load_recipe(None)).feedback_sign == 1.0


def test_every_shared_method_key_is_carried():
    shared = {f.name for f in fields(MPLHyper)} & {f.name for f in fields(MethodConfig)}
    assert "feedback_sign" in shared and "mpl_weight" in shared
    changed = {
        "feedback_sign": -1,
        "mpl_weight": 7.0,
        "teacher_supervised_weight": 0.0,
        "uda_weight": 0.0,
        "pseudo_labels": "soft",
        "feedback": "dot",
        "feedback_bn": "eval",
        "baseline": False,
    }
    overrides = [
        "method.feedback_sign=-1",
        "method.mpl_weight=7.0",
        "method.teacher_supervised_weight=0.0",
        "method.uda_weight=0.0",
        'method.pseudo_labels="soft"',
        'method.feedback="dot"',
        'method.feedback_bn="eval"',
        "method.baseline=false",
    ]
    hyper = hyper_from(load_recipe(None, overrides))
    for k, v in changed.items():
        assert getattr(hyper, k) == v, k
