"""A family of budgets from one run (recipes/family.py) takes shrink's recipe options where they apply
(the teacher, the hold, the proximal step, the fine-tunes' rate) and refuses those it sets itself."""

import pytest

from builders import learnable_bn_net, small_bn_net
from morphnet_onnx import MorphNetError
from morphnet_onnx.cli import main
from morphnet_onnx.recipes import family, shrink as shrink_recipe
from morphnet_onnx.recipes.family import parse_budgets, shrink_family
from morphnet_onnx.recipes.shrink import ShrinkOptions, train
from morphnet_onnx.training.backend import TEACHER, Distill
from morphnet_onnx.training.trainer import TrainOptions


def quick(**kw):
    kw.setdefault("batch_size", 16)
    return TrainOptions(progress=False, probe=False, **kw)


def trained_net(tmp_path):
    """learnable_bn_net trained: trained.onnx, a teacher."""
    folder = learnable_bn_net(tmp_path)
    data = folder / "train.npz"
    train(folder / "net.onnx", data, folder / "trained.onnx", options=quick(steps=120, lr=1e-2))
    return folder, data


def test_a_trained_input_teaches_every_members_fine_tune_and_not_the_run(tmp_path, monkeypatch):
    folder, data = trained_net(tmp_path)
    taught = []  # (what trained, its distillation and whether its data carried the teacher's probabilities)
    real_trainer, real_finetune = family.Trainer, family._finetune

    class SpyTrainer(real_trainer):
        def run(self, dataset, *args, **kwargs):
            taught.append(("run", self.distill, TEACHER in next(iter(dataset.batches(4, False, 0)))))
            return super().run(dataset, *args, **kwargs)

    def spy_finetune(loaded, dataset, val_set, options, steps, method, distill, **kwargs):
        taught.append(("fine-tune", distill, TEACHER in next(iter(dataset.batches(4, False, 0)))))
        return real_finetune(loaded, dataset, val_set, options, steps, method, distill, **kwargs)

    monkeypatch.setattr(family, "Trainer", SpyTrainer)
    monkeypatch.setattr(family, "_finetune", spy_finetune)
    budgets = parse_budgets("flops", "0.8x,0.6x")
    result = shrink_family(folder / "trained.onnx", data, None, budgets=budgets,
                           method=ShrinkOptions(budget=budgets[0], distill="auto", distill_weight=0.3, force=True),
                           options=quick(steps=40))
    assert result.teacher["used"] is True and result.to_dict()["teacher"] == result.teacher
    assert [kind for kind, _, _ in taught] == ["run", "fine-tune", "fine-tune"]
    assert taught[0][1:] == (None, False)  # the run decides the structures from the labels alone
    assert all(d == Distill(0.3, 4.0) and carried for _, d, carried in taught[1:])
    taught.clear()
    result = shrink_family(folder / "trained.onnx", data, None, budgets=budgets,
                           method=ShrinkOptions(budget=budgets[0], distill="off", force=True), options=quick(steps=40))
    assert result.teacher is None and all(d is None and not carried for _, d, carried in taught)


def test_a_short_fine_tune_starts_from_one_shrinks_rate_a_long_one_from_the_familys():
    short, long = family.FINETUNE_LR_RAMP
    high = family.FAMILY_TAUGHT_FINETUNE_LR
    assert family.member_finetune_lr(1, high) == family.member_finetune_lr(short, high) == \
        shrink_recipe.SHRINK_FINETUNE_LR
    assert family.member_finetune_lr(long, high) == family.member_finetune_lr(10 * long, high) == high
    middle = family.member_finetune_lr((short + long) // 2, high)
    assert shrink_recipe.SHRINK_FINETUNE_LR < middle < high and middle == round(middle, 1)


def test_a_members_fine_tune_starts_from_the_familys_own_rate_unless_finetune_lr_says(tmp_path, monkeypatch):
    """A member's fine-tune (long enough, --finetune-steps) is a cosine from FAMILY_FINETUNE_LR x --lr,
    FAMILY_TAUGHT_FINETUNE_LR x --lr where a trained input teaches it, from one shrink's rate when
    short (one shrink's steps after the cut run at SHRINK_FINETUNE_LR x --lr); --finetune-lr sets them
    all."""
    folder = small_bn_net(tmp_path, examples=16)
    (tmp_path / "taught").mkdir()
    taught, data = trained_net(tmp_path / "taught")
    rates = []
    real_trainer = shrink_recipe.Trainer

    class SpyTrainer(real_trainer):
        def __init__(self, loaded, options, *args, **kwargs):
            if not args and kwargs.get("controller") is None:  # a fine-tune: no regularizers
                rates.append((options.lr, options.schedule))
            super().__init__(loaded, options, *args, **kwargs)

    monkeypatch.setattr(shrink_recipe, "Trainer", SpyTrainer)
    budgets = parse_budgets("flops", "0.8x,0.6x")
    long = family.FINETUNE_LR_RAMP[1]
    for given, steps, expected in ((None, long, family.FAMILY_FINETUNE_LR), (0.5, long, 0.5),
                                   (None, None, shrink_recipe.SHRINK_FINETUNE_LR)):  # 40 steps: short fine-tunes
        rates.clear()
        result = shrink_family(folder / "net.onnx", folder / "train.npz", None, budgets=budgets,
                               method=ShrinkOptions(budget=budgets[0], finetune_lr=given, finetune_steps=steps,
                                                    force=True), options=quick(steps=40, lr=1e-3))
        assert rates == [(pytest.approx(expected * 1e-3), "cosine")] * 2, rates
        assert result.to_dict()["finetune_lr"] == expected
    rates.clear()
    shrink_family(taught / "trained.onnx", data, None, budgets=budgets,
                  method=ShrinkOptions(budget=budgets[0], finetune_steps=long, force=True),
                  options=quick(steps=40, lr=1e-3))
    assert rates == [(pytest.approx(family.FAMILY_TAUGHT_FINETUNE_LR * 1e-3), "cosine")] * 2, rates
    rates.clear()
    shrink_recipe.shrink(folder / "net.onnx", folder / "train.npz", None, method=ShrinkOptions(budget=budgets[1],
                         force=True), options=quick(steps=40, lr=1e-3))
    assert [lr for lr, _ in rates] == [pytest.approx(shrink_recipe.SHRINK_FINETUNE_LR * 1e-3)], rates


def test_a_family_refuses_the_recipe_options_it_sets_itself(tmp_path, capsys):
    folder = small_bn_net(tmp_path, examples=16)
    budgets = parse_budgets("flops", "0.8x,0.6x")
    for field, value, message in (("cut", "end", "--cut end: not for a family"),
                                  ("finetune_share", 0.2, "--finetune-share 0.2: not for a family"),
                                  ("reach", 0.2, "--reach 0.2: not for a family")):
        with pytest.raises(MorphNetError, match=message):
            shrink_family(folder / "net.onnx", folder / "train.npz", None, budgets=budgets,
                          method=ShrinkOptions(budget=budgets[0], **{field: value}), options=quick(steps=40))
    assert main(["shrink", str(folder / "net.onnx"), "--data", str(folder / "train.npz"), "--budget-flops",
                 "0.8x,0.6x", "--cut", "end", "-o", str(tmp_path / "f.onnx")]) == 2
    assert "--cut end: not for a family of budgets" in capsys.readouterr().err


def test_a_family_takes_the_proximal_step_and_the_hold_as_shrink_does(tmp_path, monkeypatch):
    folder = small_bn_net(tmp_path, examples=64)
    budgets = parse_budgets("flops", "0.8x,0.6x")
    made = []
    real = family.PhasedController

    def spy(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(family, "PhasedController", spy)
    result = shrink_family(folder / "net.onnx", folder / "train.npz", None, budgets=budgets,
                           method=ShrinkOptions(budget=budgets[0], proximal=True, hold_until=0.3,
                                                force=True), options=quick(steps=100))
    kwargs = made[-1]
    # the budget watched every step, the proximal step on and the first hold window as asked
    assert kwargs["every"] == 1 and kwargs["proximal_step"] == 1.0
    assert kwargs["windows"][0] == (8, 24)  # 10% and 30% of the run's 80 steps
    assert all(m["cost_ratio"] <= float(m["budget"].rstrip("x")) + 1e-9 for m in result.members)
    shrink_family(folder / "net.onnx", folder / "train.npz", None, budgets=budgets,
                  method=ShrinkOptions(budget=budgets[0], hold=False, force=True), options=quick(steps=100))
    assert made[-1]["windows"] is None and made[-1]["every"] == 25 and made[-1]["proximal_step"] is None


def test_shrink_and_a_family_say_whether_the_input_taught(tmp_path, capsys):
    folder, data = trained_net(tmp_path)
    common = [str(folder / "trained.onnx"), "--data", str(data), "--batch-size", "16", "--steps", "40", "--force",
              "--no-progress"]
    assert main(["shrink", *common, "--budget-flops", "0.6x", "-o", str(tmp_path / "one.onnx")]) == 0
    assert "distillation on: the input model scores" in capsys.readouterr().out
    assert main(["shrink", *common, "--budget-flops", "0.8x,0.6x", "-o", str(tmp_path / "fam.onnx")]) == 0
    assert ("distillation on (each member's fine-tune; the run learns from the labels): the input model scores"
            in capsys.readouterr().out)
    assert main(["shrink", *common, "--budget-flops", "0.8x,0.6x", "--distill", "off",
                 "-o", str(tmp_path / "off.onnx")]) == 0
    assert "distillation" not in capsys.readouterr().out
