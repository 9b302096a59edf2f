"""Reduced MPL's pieces: mpl_step with the teacher reading its own inputs (exact REINFORCE gradient),
the reduced teacher starting as the identity, stored predictions turned back into distributions,
and streams that deliver them with the images without changing the images."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from mpltools.data import predictions
from mpltools.data.codecs import InputSpec, Sample, encode_png
from mpltools.data.loaders import LABELED, UNLABELED, StreamConfig, make_stream
from mpltools.data.opening import open_shard_set
from mpltools.data.shards import ShardWriter
from mpltools.data.transforms import AugmentSpec
from mpltools.methods import Batch, Networks, build_sgd, mpl_step
from mpltools.models import build_model
from tests.unit.test_feedback_gradients import _dot, _hp, _independent_quantities, _mlp, _params

K = 3


def _reduced_teacher(seed=1):
    torch.manual_seed(seed)
    teacher = build_model("reduced_teacher", K, (K,), hidden=[5], activation="tanh").double()
    with torch.no_grad():  # leave the identity so every parameter has a gradient
        teacher.fc.weight.normal_(0, 0.5)
        teacher.fc.bias.normal_(0, 0.5)
    return teacher


def _batch(seed=0, n_l=6, n_u=8, d=4):
    """Images of dimension d=4 for the student, stored logits of dimension K=3 for the teacher."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return Batch(
        r(n_l, d),
        torch.randint(0, K, (n_l,), generator=g),
        r(n_u, d),
        r(n_u, d),
        teacher_labeled=2 * r(n_l, K),
        teacher_unlabeled=2 * r(n_u, K),
    )


def _run(hp, batch, generator=None):
    teacher, student = _reduced_teacher(), _mlp(2, d_in=4, hidden=5)
    nets = Networks(
        teacher,
        student,
        build_sgd(teacher, hp.teacher_lr, hp.momentum, hp.nesterov, hp.teacher_weight_decay),
        build_sgd(student, hp.student_lr, hp.momentum, hp.nesterov, hp.student_weight_decay),
    )
    before = (copy.deepcopy(teacher), copy.deepcopy(student))
    return mpl_step(nets, batch, 0, hp, generator=generator), nets, before


def _teacher_logits(teacher, phi, z):
    return functional_call(teacher, phi, (z,))


@pytest.mark.parametrize("pseudo_labels", ["sample", "argmax"])
def test_teacher_inputs_get_the_exact_reinforce_gradient(pseudo_labels):
    batch, eta = _batch(), 0.1
    gen = torch.Generator().manual_seed(5)
    replay = torch.Generator().set_state(gen.get_state())
    out, nets, (teacher0, student0) = _run(_hp(pseudo_labels=pseudo_labels), batch, gen)

    # The pseudo labels come from the teacher's output on the STORED logits of the unlabelled batch.
    probs = torch.softmax(teacher0(batch.teacher_unlabeled), -1)
    y_hat = torch.multinomial(probs, 1, generator=replay).squeeze(1) if pseudo_labels == "sample" else probs.argmax(-1)
    g_u, g_l_new, _, _ = _independent_quantities(teacher0, student0, batch, y_hat, eta)  # the student sees the images
    h = eta * _dot(g_l_new, g_u)
    assert out["feedback/h"].item() == pytest.approx(h.item(), rel=1e-10)

    expected = grad(lambda p: F.cross_entropy(_teacher_logits(teacher0, p, batch.teacher_unlabeled), y_hat))(_params(teacher0))
    total = 0.0
    for name, p in nets.teacher.named_parameters():
        torch.testing.assert_close(p.grad, h * expected[name], rtol=1e-9, atol=1e-12)
        total += float(expected[name].norm())
    assert total > 1e-3


def test_teacher_supervised_loss_reads_the_labelled_predictions():
    batch = _batch(seed=1)
    hp = _hp(feedback="taylor", teacher_supervised_weight=0.7, label_smoothing=0.1)
    out, nets, (teacher0, student0) = _run(hp, batch)
    y_hat = teacher0(batch.teacher_unlabeled).argmax(-1)
    h = out["feedback/h"].item()
    with torch.no_grad():
        ce = lambda m, x: F.cross_entropy(m(x), batch.labeled_y).item()  # noqa: E731
        student1 = copy.deepcopy(student0)
        for p, q in zip(student1.parameters(), nets.student.parameters()):
            p.copy_(q)
        assert h == pytest.approx(ce(student0, batch.labeled_x) - ce(student1, batch.labeled_x), rel=1e-9)

    def loss(p):
        sup = (1 - 0.1) * F.cross_entropy(
            _teacher_logits(teacher0, p, batch.teacher_labeled), batch.labeled_y
        ) + 0.1 * -torch.log_softmax(_teacher_logits(teacher0, p, batch.teacher_labeled), -1).mean(-1).mean()
        return 0.7 * sup + h * F.cross_entropy(_teacher_logits(teacher0, p, batch.teacher_unlabeled), y_hat)

    expected = grad(loss)(_params(teacher0))
    for name, p in nets.teacher.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-8, atol=1e-12)


def test_a_batch_without_teacher_inputs_is_unchanged():
    b = Batch(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), torch.ones(4, 3), torch.ones(4, 3))
    assert b.for_teacher() is b
    r = _batch()
    t = r.for_teacher()
    assert (
        t.labeled_x is r.teacher_labeled and t.unlabeled_weak is r.teacher_unlabeled and t.unlabeled_strong is r.teacher_unlabeled
    )


def test_reduced_teacher_starts_as_the_identity_and_refuses_images():
    torch.manual_seed(0)
    for features in ("probs", "logits"):
        t = build_model("reduced_teacher", 7, (7,), hidden=[32, 16], features=features)
        z = torch.randn(5, 7) * 4
        assert torch.equal(t(z), z)
    with pytest.raises(ValueError, match="cannot take images"):
        build_model("reduced_teacher", 7, (3, 8, 8))


def test_topk_predictions_rebuild_the_stored_distribution():
    probs = np.array([0.05, 0.6, 0.1, 0.2, 0.05], np.float32)
    p, i = predictions.topk_rows(probs[None], 2)
    assert i.tolist() == [[1, 3]] and p[0].tolist() == pytest.approx([0.6, 0.2])
    payload = predictions.encode_topk(p[0], i[0])
    logits = predictions.as_logits(predictions.TOPK, predictions.load(payload, "x"), 5, "x")
    dist = torch.softmax(torch.from_numpy(logits), -1).numpy()
    assert dist[[1, 3]] == pytest.approx([0.6, 0.2], rel=1e-6)
    assert dist[[0, 2, 4]] == pytest.approx([0.2 / 3] * 3, rel=1e-5)
    full = predictions.as_logits(
        predictions.TOPK, predictions.load(predictions.encode_topk(np.array([1.0], np.float32), np.array([2])), "x"), 3, "x"
    )
    assert np.isfinite(full).all()  # the other classes get the floor, not log(0)
    z = np.array([1.0, -2.0, 3.5], np.float32)
    stored = predictions.load(predictions.encode_logits(z, "float16"), "x")
    assert stored.dtype == np.float16 and np.array_equal(predictions.as_logits(predictions.LOGITS, stored, 3, "x"), z)
    with pytest.raises(Exception, match="logits"):
        predictions.as_logits(predictions.LOGITS, z, 4, "sample x")


def _prediction_set(root, n=12, classes=3):
    """A labelled image set whose teacher_logits.npy is a one-hot (x10) of the sample's label."""
    writer = ShardWriter(
        root,
        input_spec=InputSpec("image", "png", (6, 6, 1)),
        classes=[f"c{c}" for c in range(classes)],
        labeled=True,
        provenance={},
        max_per_shard=5,
        extras=(predictions.LOGITS,),
    )
    rng = np.random.default_rng(0)
    for i in range(n):
        label = i % classes
        img = (rng.integers(0, 50, (6, 6, 1)) + 60 * label).astype(np.uint8)
        writer.write(
            Sample(
                f"s{i:03d}",
                "png",
                encode_png(img),
                label,
                {predictions.LOGITS: predictions.encode_logits(10 * np.eye(classes)[label], "float16")},
            )
        )
    writer.close()
    return open_shard_set(root)


@pytest.mark.parametrize("in_memory", [True, False])
def test_streams_deliver_stored_predictions_aligned_with_images_without_changing_them(tmp_path, in_memory):
    shards = _prediction_set(tmp_path / "pred")
    aug = AugmentSpec(kind="cifar", image_size=6, flip=True, cutout=False)
    for views, stream_id in (("labeled", LABELED), ("unlabeled", UNLABELED)):
        plain = make_stream(shards, StreamConfig(views, 4, seed=3, stream_id=stream_id, shuffle_buffer=4), aug, in_memory)
        extra = make_stream(
            shards,
            StreamConfig(views, 4, seed=3, stream_id=stream_id, shuffle_buffer=4, extras=(predictions.LOGITS,)),
            aug,
            in_memory,
            position=0,
        )
        for _ in range(5):  # more than one epoch
            a, b = next(plain), next(extra)
            for key in a:
                assert torch.equal(a[key], b[key]), key
            z = b[predictions.LOGITS]
            assert z.dtype == torch.float32 and z.shape == (4, 3)
            if views == "labeled":
                assert torch.equal(z.argmax(1), b["y"])  # row i is image i's prediction
        # Resuming at a position gives the same batches as reading up to it.
        again = make_stream(
            shards,
            StreamConfig(views, 4, seed=3, stream_id=stream_id, shuffle_buffer=4, extras=(predictions.LOGITS,)),
            aug,
            in_memory,
            position=4,
        )
        last = next(again)
        for key in b:
            assert torch.equal(last[key], b[key])
