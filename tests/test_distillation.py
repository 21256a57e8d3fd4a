"""Distillation from the input model (distillation.py, the loss of both backends): when the input
teaches, and that the loss is (1 - w) CE + w T^2 H(teacher, softmax(logits / T))."""

import importlib.util

import numpy as np
import pytest

from builders import learnable_bn_net, small_bn_net
from morphnet_onnx import MorphNetError
from morphnet_onnx.loading.model import load
from morphnet_onnx.recipes.shrink import Budget, ShrinkOptions, shrink, train
from morphnet_onnx.training.backend import TEACHER, Distill
from morphnet_onnx.training.data import load_data
from morphnet_onnx.training.distillation import check_teacher, softened, teacher_logits, with_teacher
from morphnet_onnx.training.trainer import TrainOptions


def quick(**kw):
    kw.setdefault("batch_size", 16)
    return TrainOptions(progress=False, probe=False, **kw)


def test_auto_distils_only_from_a_trained_teacher():
    labels = np.array([0, 1, 2, 3] * 25)
    good = np.eye(4)[labels] * 5.0  # right on every example
    noise = np.random.default_rng(0).standard_normal((100, 4))  # an untrained network: about chance
    assert check_teacher(good, labels, "auto").used
    untrained = check_teacher(noise, labels, "auto")
    assert not untrained.used and "untrained" in untrained.reason and untrained.chance == pytest.approx(0.25)
    assert check_teacher(noise, labels, "on").used and not check_teacher(good, labels, "off").used
    # halfway from chance (25%) to 100% is the line: 62% is under it, 63% over
    half = np.where(np.arange(100)[:, None] < 62, good, np.roll(good, 1, axis=1))
    assert not check_teacher(half, labels, "auto").used
    half = np.where(np.arange(100)[:, None] < 63, good, np.roll(good, 1, axis=1))
    assert check_teacher(half, labels, "auto").used


def test_softened_probabilities():
    logits = np.array([[2.0, 0.0, -2.0]])
    p1, p4 = softened(logits, 1.0), softened(logits, 4.0)
    assert p1.sum() == pytest.approx(1.0) and p4.sum() == pytest.approx(1.0)
    assert p4.max() < p1.max()  # a higher temperature flattens


def _session_loss(backend, tmp_path, distill):
    folder = small_bn_net(tmp_path)
    loaded = load(str(folder / "net.onnx"), None)
    data = load_data(folder / "train.npz", None, loaded, "ce")
    teacher = softened(np.random.default_rng(1).standard_normal((len(data), 4)), distill.temperature)
    batch = next(with_teacher(data, teacher).batches(16, False, 0))
    options = quick(steps=1, backend=backend, lr=1e-9)
    if backend == "torch":
        from morphnet_onnx.training.distributed import current_world
        from morphnet_onnx.training.torch_backend import TorchSession

        session = TorchSession(loaded, options, [], [], None, current_world(), None, distill)
    else:
        from morphnet_onnx.training.ort_backend import OrtSession

        session = OrtSession(loaded, options, [], [], None, None, None, distill, 4)
    try:
        out = session.step(batch, 1e-9)
    finally:
        session.close()
    return out, batch


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_the_loss_mixes_labels_and_teacher(tmp_path, backend):
    if backend == "torch" and (importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx2torch") is None):
        pytest.skip("the torch backend needs torch and onnx2torch (pip install 'morphnet-onnx[torch]')")
    distill = Distill(weight=0.7, temperature=3.0)
    out, batch = _session_loss(backend, tmp_path, distill)
    z = out.logits / distill.temperature
    log_q = z - z.max(axis=1, keepdims=True)
    log_q = log_q - np.log(np.exp(log_q).sum(axis=1, keepdims=True))
    cross = -np.mean(np.sum(batch[TEACHER] * log_q, axis=1))
    expected = (1 - distill.weight) * out.task + distill.weight * distill.temperature ** 2 * cross
    assert out.loss == pytest.approx(expected, rel=1e-4)
    assert out.loss != pytest.approx(out.task, rel=1e-3)  # the teacher's term is there


def test_teacher_logits_skip_a_trailing_softmax(tmp_path):
    folder = small_bn_net(tmp_path)
    loaded = load(str(folder / "net.onnx"), None)
    data = load_data(folder / "train.npz", None, loaded, "ce")
    logits = teacher_logits(loaded.model, data)
    assert logits.shape == (len(data), 4)
    assert not np.allclose(logits.sum(axis=1), 1.0)


def test_shrink_distils_from_a_trained_input_and_not_from_an_untrained_one(tmp_path):
    folder = learnable_bn_net(tmp_path)
    net, data = folder / "net.onnx", folder / "train.npz"
    budget = Budget("flops", "0.6x")
    untrained = shrink(net, data, None, budget=budget, distill="auto", options=quick(steps=4), force=True)
    assert untrained.decision["teacher"]["used"] is False
    train(net, data, folder / "trained.onnx", options=quick(steps=120, lr=1e-2))
    taught = shrink(folder / "trained.onnx", data, None, budget=budget, distill="auto", options=quick(steps=4),
                    force=True)
    assert taught.decision["teacher"]["used"] is True and taught.steps == 4
    assert taught.decision["teacher"]["accuracy"] >= 0.625  # halfway from chance (about 25%) to 100%
    with pytest.raises(MorphNetError, match="--distill-weight"):
        ShrinkOptions(budget=budget, distill_weight=1.5)
    with pytest.raises(MorphNetError, match="--distill nope"):
        ShrinkOptions(budget=budget, distill="nope")
