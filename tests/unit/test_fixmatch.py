"""FixMatch baseline: the mask, the hard-label CE and the total loss against hand-computed values,
the update against the hand-computed gradient, and the bf16 autocast path.

The network is a 3x3 linear layer set to the identity, so its logits ARE the inputs and every
loss can be written down by hand.
"""

import math

import pytest
import torch
from torch import nn

from mpltools.methods import STEPS, Batch, MPLHyper, Networks, build_sgd
from mpltools.methods.fixmatch import fixmatch_loss, fixmatch_step

LOG = math.log
# Weak-view logits = log-probabilities: row 0 is confident (0.96 -> class 0), row 1 is not (0.5),
# row 2 is confident (0.98 -> class 2).
WEAK = torch.tensor([[LOG(0.96), LOG(0.02), LOG(0.02)], [LOG(0.5), LOG(0.3), LOG(0.2)], [LOG(0.01), LOG(0.01), LOG(0.98)]])
# Strong-view logits: row 0 uniform (CE = log 3), row 1 anything, row 2 gives class 2 probability 1/2 (CE = log 2).
STRONG = torch.tensor([[0.0, 0.0, 0.0], [5.0, -1.0, 2.0], [0.0, 0.0, LOG(2.0)]])
# Labelled logits and labels: CE = log 3 (uniform) and log(e + 2) - 1.
LABELED = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
LABELS = torch.tensor([2, 0])


def test_mask_hard_labels_and_unlabelled_loss_by_hand():
    loss, mask, pseudo = fixmatch_loss(WEAK, STRONG, 0.95)
    assert pseudo.tolist() == [0, 0, 2]
    assert mask.item() == pytest.approx(2 / 3)
    # Masked-out row 1 counts in the denominator (the paper's 1 / (mu B) mean).
    assert loss.item() == pytest.approx((LOG(3.0) + LOG(2.0)) / 3, abs=1e-6)
    loss_all, mask_all, _ = fixmatch_loss(WEAK, STRONG, 0.0)
    ce_row1 = -torch.log_softmax(STRONG[1], dim=0)[0].item()
    assert mask_all.item() == 1.0 and loss_all.item() == pytest.approx((LOG(3.0) + ce_row1 + LOG(2.0)) / 3, abs=1e-6)
    none, mask_none, _ = fixmatch_loss(WEAK, STRONG, 0.99)
    assert none.item() == 0.0 and mask_none.item() == 0.0


def test_the_weak_view_is_a_target_only():
    weak = WEAK.clone().requires_grad_(True)
    strong = STRONG.clone().requires_grad_(True)
    fixmatch_loss(weak, strong, 0.95)[0].backward()
    assert weak.grad is None
    # d/dz CE(z, c) = softmax(z) - onehot(c), times mask / N; row 1 is masked out.
    expected = torch.zeros(3, 3)
    expected[0] = (torch.full((3,), 1 / 3) - torch.tensor([1.0, 0, 0])) / 3
    expected[2] = (torch.tensor([0.25, 0.25, 0.5]) - torch.tensor([0, 0, 1.0])) / 3
    assert torch.allclose(strong.grad, expected, atol=1e-6)


def identity_net() -> nn.Linear:
    net = nn.Linear(3, 3)
    with torch.no_grad():
        net.weight.copy_(torch.eye(3))
        net.bias.zero_()
    return net


def hyper(**kw) -> MPLHyper:
    base = dict(total_steps=10, student_lr=0.1, student_warmup=0, lr_schedule="constant", momentum=0.0, nesterov=False)
    base.update(student_weight_decay=0.0, ema_decay=0.0, label_smoothing=0.0, fixmatch_weight=0.5)
    base.update(kw)
    return MPLHyper(**base)


def test_total_loss_and_the_update_match_the_hand_computed_gradient():
    hp = hyper()
    net = identity_net()
    nets = Networks(None, net, None, build_sgd(net, hp.student_lr, 0.0, False))
    batch = Batch(LABELED.clone(), LABELS.clone(), WEAK.clone(), STRONG.clone())
    out = fixmatch_step(nets, batch, 0, hp)

    sup = (LOG(3.0) + (LOG(math.e + 2.0) - 1.0)) / 2  # CE([0,0,0], 2) and CE([1,0,0], 0)
    unl = (LOG(3.0) + LOG(2.0)) / 3
    assert out["student/sup"].item() == pytest.approx(sup, abs=1e-6)
    assert out["student/fixmatch"].item() == pytest.approx(unl, abs=1e-6)
    assert out["student/fixmatch_mask"].item() == pytest.approx(2 / 3)
    assert out["student/loss"].item() == pytest.approx(sup + 0.5 * unl, abs=1e-6)

    # dL/dlogits by hand (softmax - onehot), then dL/dW = sum_rows dlogits^T x, dL/db = sum_rows dlogits.
    def dlogits(z, c, weight):
        return (torch.softmax(z, dim=0) - torch.nn.functional.one_hot(torch.tensor(c), 3).float()) * weight

    rows = [(LABELED[0], dlogits(LABELED[0], 2, 1 / 2)), (LABELED[1], dlogits(LABELED[1], 0, 1 / 2))]
    rows += [(STRONG[0], dlogits(STRONG[0], 0, 0.5 / 3)), (STRONG[2], dlogits(STRONG[2], 2, 0.5 / 3))]
    grad_w = sum(torch.outer(g, x) for x, g in rows)
    grad_b = sum(g for _, g in rows)
    assert torch.allclose(net.weight.detach(), torch.eye(3) - 0.1 * grad_w, atol=1e-6)
    assert torch.allclose(net.bias.detach(), -0.1 * grad_b, atol=1e-6)
    assert out["grad_norm/student"].item() == pytest.approx(torch.cat([grad_w.reshape(-1), grad_b]).norm().item(), rel=1e-5)


def test_threshold_is_inclusive_and_weight_zero_is_supervised_only():
    p = torch.softmax(WEAK[2], dim=0).max().item()  # row 2's confidence, 0.98 up to rounding
    _, exact, _ = fixmatch_loss(WEAK, STRONG, p)
    assert exact.item() == pytest.approx(1 / 3)  # at tau == its confidence row 2 is kept, row 0 (0.96) is not
    _, above, _ = fixmatch_loss(WEAK, STRONG, p + 1e-6)
    assert above.item() == 0.0
    hp = hyper(fixmatch_weight=0.0)
    net = identity_net()
    out = fixmatch_step(Networks(None, net, None, build_sgd(net, 0.1, 0.0, False)), Batch(LABELED, LABELS, WEAK, STRONG), 0, hp)
    assert out["student/loss"].item() == pytest.approx(out["student/sup"].item())


def test_bf16_autocast_on_cpu_gives_the_fp32_losses_within_bf16_rounding():
    hp = hyper()
    outs = []
    for autocast in (False, True):
        net = identity_net()
        nets = Networks(None, net, None, build_sgd(net, hp.student_lr, 0.0, False))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            outs.append(fixmatch_step(nets, Batch(LABELED, LABELS, WEAK, STRONG), 0, hp, diagnose=True))
        assert all(p.dtype == torch.float32 for p in net.parameters())
    fp32, bf16 = outs
    assert bf16["student/loss"].dtype == torch.float32
    assert bf16["student/fixmatch_mask"].item() == fp32["student/fixmatch_mask"].item()
    for key in ("student/loss", "student/sup", "student/fixmatch"):
        assert bf16[key].item() == pytest.approx(fp32[key].item(), rel=2e-2), key
    assert bf16["hist/pseudo_labels"].tolist() == [2.0, 0.0, 1.0]


def test_registered_and_validated():
    assert STEPS["fixmatch"] is fixmatch_step
    assert MPLHyper().fixmatch_threshold == 0.95 and MPLHyper().fixmatch_weight == 1.0
    from mpltools.errors import UsageError
    from mpltools.preflight import load_and_check

    for override in ("method.fixmatch_weight=-1.0", "method.fixmatch_threshold=1.5"):
        with pytest.raises(UsageError, match=override.split("=")[0]):
            load_and_check(None, ["method.name=fixmatch", override])
