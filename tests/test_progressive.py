"""Channels held at zero while shrink trains, the proximal step, and the cut as soon as the budget is
met (progressive.py, controller.py's hold window, learning.shrink's `cut="budget"`)."""

import numpy as np
import onnx
import pytest

from builders import random_dataset
from conftest import REPO
from morphnet_onnx.builders import Net
from morphnet_onnx.loading.model import load
from morphnet_onnx.method.progressive import _water_level, held_values, proximal_values
from morphnet_onnx.method.regularizers import group_regularizers, group_vectors
from morphnet_onnx.recipes.shrink import Budget, shrink
from morphnet_onnx.surgery.pruning import prepare
from morphnet_onnx.training.trainer import TrainOptions

TINY = REPO / "models" / "tiny_resnet.onnx"


def quick(**kw):
    kw.setdefault("batch_size", 16)
    return TrainOptions(progress=False, probe=False, **kw)


def _regs(kind="auto"):
    loaded, analysis = prepare(str(TINY))
    regs = group_regularizers(analysis, loaded, kind)
    params = {t.name: onnx.numpy_helper.to_array(t).copy() for t in loaded.model.graph.initializer}
    return regs, params


def test_held_channels_read_zero_and_nothing_else_moves():
    regs, params = _regs()
    stream = next(r for r in regs if len(r.members) > 1)  # a residual stream: every member is zeroed
    held = {stream.group_id: np.zeros(stream.width, dtype=bool)}
    held[stream.group_id][[0, 2]] = True
    values = held_values(regs, params, held)
    shifts = {m.shift for m in stream.members if m.shift}
    assert shifts and set(values) == {m.param for m in stream.members} | shifts
    vector = group_vectors(regs, {**params, **values})[stream.group_id]
    assert vector[[0, 2]].tolist() == [0.0, 0.0]
    before = group_vectors(regs, params)[stream.group_id]
    np.testing.assert_array_equal(vector[[1, 3]], before[[1, 3]])
    for member in stream.members:  # the shifts of held channels go too; nothing else of them moves
        shift = values[member.shift].reshape(-1)
        for channel in range(stream.width):
            position = member.picks[0][channel]
            assert shift[position] == (0.0 if channel in (0, 2) else params[member.shift].reshape(-1)[position])


def test_a_held_channel_is_cut_exactly():
    """Held channels (gate and shift at zero) output exactly zero, so cutting them changes nothing,
    even at the borders of padded convs (the constant a removed channel left was folded into the
    next layer, exact only inside the maps)."""
    from morphnet_onnx.analysis.walk import analyze
    from morphnet_onnx.graph_utils import with_params
    from morphnet_onnx.loading.runtime import make_session
    from morphnet_onnx.surgery.apply import apply_structure
    from morphnet_onnx.surgery.structure import Structure

    regs, params = _regs()
    loaded, analysis = prepare(str(TINY))
    structure = Structure.full(analysis)
    held = {}
    for reg in regs:
        dead = np.zeros(reg.width, dtype=bool)
        dead[: reg.width // 2] = True
        held[reg.group_id] = dead
        structure.alive[reg.group_id][dead] = False
    model = with_params(loaded.model, {**params, **held_values(regs, params, held)})
    cut = apply_structure(load(model), analyze(load(model)), structure, approximate_borders=True).model
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    name = loaded.model.graph.input[0].name
    expected = make_session(model).run(None, {name: x})[0]
    got = make_session(cut).run(None, {name: x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_held_filter_rows_without_batch_norm():
    net = Net(input_shape=(1, 3, 8, 8))
    x = net.relu(net.conv("input", 3, 6, name="c1"))
    x = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    loaded = load(net.model(net.gemm(x, 6, 2, name="fc")))
    from morphnet_onnx.analysis.walk import analyze

    regs = group_regularizers(analyze(loaded), loaded, "group-lasso")
    params = {t.name: onnx.numpy_helper.to_array(t).copy() for t in loaded.model.graph.initializer}
    held = {regs[0].group_id: np.array([True, False, False, False, False, True])}
    values = held_values(regs, params, held)
    vector = group_vectors(regs, {**params, **values})[regs[0].group_id]
    assert vector[0] < 1e-5 and vector[5] < 1e-5 and (vector[1:5] > 1e-3).all()


def test_water_level_is_the_proximal_step_of_a_max():
    values = np.array([[3.0, 3.0, 1.0], [1.0, 2.0, 1.0]])
    level = _water_level(values, np.array([1.0, 1.5, 5.0]))
    # column 0: only the top is lowered, by the whole budget; column 1: both lowered to 1.75; 2: to 0
    np.testing.assert_allclose(level, [2.0, 1.75, 0.0])


def test_proximal_step_soft_thresholds_single_gates():
    regs, params = _regs()
    single = next(r for r in regs if len(r.members) == 1 and len(r.members[0].picks) == 1)
    before = group_vectors(regs, params)[single.group_id]
    weights = np.zeros(sum(r.width for r in regs), dtype=np.float32)
    offset = sum(r.width for r in regs[:regs.index(single)])
    weights[offset:offset + single.width] = 1.0
    step = float(np.median(before))
    after = group_vectors(regs, {**params, **proximal_values(regs, params, weights, step)})
    np.testing.assert_allclose(after[single.group_id], np.maximum(before - step, 0.0), rtol=1e-6, atol=1e-7)
    assert (after[single.group_id] == 0).sum() >= single.width // 2  # exactly zero, not near it
    for reg in regs:  # no weight, no step
        if reg is not single:
            np.testing.assert_array_equal(after[reg.group_id], group_vectors(regs, params)[reg.group_id])


def test_cut_at_the_budget_after_holding(tmp_path):
    """The structure comes down to the budget by the end of the hold window, the removed channels
    train at zero for a while, the model is cut then and the rest of the steps train it: all the
    steps taken, the written model within the budget."""
    data = random_dataset(tmp_path, 96, 40, val_key="x")
    steps = 100
    result = shrink(TINY, data / "train.npz", tmp_path / "s.onnx", val=data / "val.npz",
                    budget=Budget("flops", "0.5x"), cut="budget", hold=True, hold_from=0.05, hold_until=0.25,
                    finetune_schedule="continue", finetune_lr=1.0, finetune_share=0.3,
                    options=quick(steps=steps), force=True)
    d = result.decision
    assert d["decided_at"] is not None and d["decided_at"] <= 25
    assert d["learn_steps"] == d["decided_at"] + 25 and d["learn_steps"] + d["finetune_steps"] == steps
    assert result.steps == steps and d["held_channels"] > 0
    assert result.flops_after <= 0.5 * result.flops_before
    assert d["cut_cost"] is not None


def test_before_recipe_cuts_at_the_end(tmp_path):
    data = random_dataset(tmp_path, 96, 40, val_key="x")
    result = shrink(TINY, data / "train.npz", None, budget=Budget("flops", "0.5x"), cut="end", hold=False,
                    finetune_share=0.25, options=quick(steps=20), force=True)
    assert (result.decision["learn_steps"], result.decision["finetune_steps"], result.steps) == (15, 5, 20)
    assert result.decision["held_channels"] == 0 and result.decision["decided_at"] is None


def test_the_cut_model_continues_the_runs_schedule(tmp_path, monkeypatch):
    """`finetune_schedule="continue"` at `finetune_lr=1.0`: the steps after the cut take the rates the
    one-cycle schedule of the whole run gives them; "cosine" at 0.1 starts a tenth as high and decays."""
    from morphnet_onnx.recipes import shrink as shrink_module
    from morphnet_onnx.training.trainer import Trainer, learning_rate

    data = random_dataset(tmp_path, 96, 40, val_key="x")
    rates: dict[str, list[float]] = {}
    run = Trainer.run

    def recording(self, dataset, on_step=None, *args, **kwargs):
        seen = rates.setdefault("tune" if self.regs == [] else "learn", [])

        def step(info):
            seen.append(info.lr)
            if on_step:
                on_step(info)
        return run(self, dataset, step, *args, **kwargs)

    monkeypatch.setattr(shrink_module.Trainer, "run", recording)
    options = quick(steps=60, schedule="onecycle")
    result = shrink(TINY, data / "train.npz", None, budget=Budget("flops", "0.5x"), cut="budget", hold=True,
                    hold_from=0.05, hold_until=0.25, finetune_schedule="continue", finetune_lr=1.0,
                    options=options, force=True)
    cut = result.decision["learn_steps"]
    expected = [learning_rate(options, cut + k, 60) for k in range(60 - cut)]
    np.testing.assert_allclose(rates["tune"], expected, rtol=1e-6)
    rates.clear()
    shrink(TINY, data / "train.npz", None, budget=Budget("flops", "0.5x"), cut="budget", hold=True,
           hold_from=0.05, hold_until=0.25, finetune_schedule="cosine", finetune_lr=0.1, options=options, force=True)
    assert rates["tune"][0] == pytest.approx(0.1 * options.lr) and rates["tune"][-1] < rates["tune"][0] / 10


def test_the_proximal_step_leaves_the_shifts_alone():
    regs, params = _regs()
    weights = np.ones(sum(r.width for r in regs), dtype=np.float32)
    values = proximal_values(regs, params, weights, 0.1)
    shifts = {m.shift for r in regs for m in r.members if m.shift}
    assert shifts and not shifts & set(values)
