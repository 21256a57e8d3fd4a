"""The measured latency table (cost/timing.py, cost/latency.py, cost/widths.py, surgery/latency.py) and
what reads it: costs, decide's allowed widths, the floor check, the landing, the family's phases.
Nothing here asserts a time: tables are measured on tiny models and checked for what they are."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import onnx
import pytest

from builders import random_dataset, spread_gates, tiny_residual_net
from conftest import REPO, TORCHVISION_DIR
from morphnet_onnx import (LatencySettings, MorphNetError, analyze, inspect, latency_table, load, load_table,
                           measure_latency, shrink_family)
from morphnet_onnx.cli import main
from morphnet_onnx.cost.fitting import UnitFit, copy_weights, fit_unit, nnls, unit_seconds
from morphnet_onnx.cost.latency import CPU_FORMAT, LatencyTable
from morphnet_onnx.cost.resources import compute_costs, parse_hardware
from morphnet_onnx.cost.timing import Measurement, median_noise
from morphnet_onnx.cost.widths import fast_widths, worth_having
from morphnet_onnx.method.controller import BudgetController
from morphnet_onnx.method.decision import _ranked_blocks, decide
from morphnet_onnx.method.family import PhasedController, phase_ends, phase_windows
from morphnet_onnx.method import landing
from morphnet_onnx.method.landing import _next_target, check_floor, machine_drift
from morphnet_onnx.recipes.family import member_path, parse_budgets
from morphnet_onnx.method.regularizers import group_regularizers
from morphnet_onnx.recipes.shrink import Budget, ShrinkOptions, shrink
from morphnet_onnx.loading.placeholders import materialize_weights
from morphnet_onnx.loading.runtime import make_session
from morphnet_onnx.surgery.apply import Surgeon
from morphnet_onnx.surgery.latency import Attribution, random_copy, timing_cut
from morphnet_onnx.surgery.pruning import prepare
from morphnet_onnx.training.trainer import TrainOptions

TINY = REPO / "models" / "tiny_resnet.onnx"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "morphnet-onnx" / "latency"


def test_settings_are_checked_with_one_line_errors():
    assert LatencySettings(threads=1).clock == "cpu" and LatencySettings().clock == "wall"
    for bad in (dict(threads=-1), dict(batch=0), dict(provider=""), dict(threads=True)):
        with pytest.raises(MorphNetError):
            LatencySettings(**bad)
    with pytest.raises(MorphNetError, match="measured on the model"):
        parse_hardware("measure")
    with pytest.raises(MorphNetError, match="round-to auto"):
        ShrinkOptions(budget=Budget("latency", "0.5x"), round_to="auto")
    ShrinkOptions(budget=Budget("latency", "0.5x"), round_to="auto", hardware="measure")


def test_median_noise_is_the_relative_half_width_of_the_median_interval():
    median, noise = median_noise([1.0] * 50)
    assert median == 1.0 and noise == 0.0
    values = np.random.default_rng(0).normal(1.0, 0.1, 400)
    median, noise = median_noise(values)
    assert abs(median - 1.0) < 0.02 and 0.003 < noise < 0.03
    assert median_noise([1.0, 2.0])[1] == 1.0  # too few runs: no estimate


def test_a_models_noise_covers_how_far_its_sessions_land_apart(monkeypatch):
    """Sessions of one model at 1.00, 1.01 and 1.08 ms, each known to 0.5%: the model's time is their
    median and its noise half their range (4%), not the pooled interval nor the closest pair's."""
    import morphnet_onnx.cost.timing as timing

    sessions = [timing.Measurement(t, 0.005, 50, "cpu") for t in (1.08e-3, 1.00e-3, 1.01e-3)]
    monkeypatch.setattr(timing, "timing_session", lambda model, settings: object())
    monkeypatch.setattr(timing, "timing_feeds", lambda session, shapes, batch: {})
    monkeypatch.setattr(timing, "measure_sessions",
                        lambda opened, feeds, clock, tolerance, max_seconds, model_of: (sessions, []))
    [measured] = timing.measure_models([tiny_residual_net()], LatencySettings(threads=1), {}, sessions=3)
    assert measured.median_s == pytest.approx(1.01e-3)
    assert measured.noise == pytest.approx(0.04 / 1.01)
    assert measured.runs == 150


def _spell_turns() -> list[tuple[int, float]]:
    """Sessions 0 (the reference, 2 ms) and 1 (1 ms: half of it) in alternated turns; the machine
    runs at half speed for the first 21 turns: the reference sees 11 slow turns of 20, the other 10."""
    turns = []
    for position in range(40):
        slow = 2.0 if position <= 20 else 1.0
        session = position % 2
        turns.append((session, (2e-3 if session == 0 else 1e-3) * slow))
    return turns


def test_on_the_wall_clock_a_share_comes_from_paired_turns_not_the_medians(monkeypatch):
    """A speed change inside a measurement puts each model's median on either speed: here the
    reference's median on the slow one and the other's between, a ratio of 0.375 for a true 0.5;
    the turns paired with their neighbours give 0.5. On the CPU clock: the ratio of the medians."""
    import morphnet_onnx.cost.timing as timing

    turns = _spell_turns()
    medians = [float(np.median([t for s, t in turns if s == session])) for session in (0, 1)]
    assert medians[1] / medians[0] == pytest.approx(0.375)
    assert np.median(timing.paired_shares(turns, [0, 1])[1]) == pytest.approx(0.5)

    per_session = [timing.Measurement(m, 0.01, 20, "wall") for m in medians]
    monkeypatch.setattr(timing, "timing_session", lambda model, settings: object())
    monkeypatch.setattr(timing, "timing_feeds", lambda session, shapes, batch: {})
    monkeypatch.setattr(timing, "measure_sessions",
                        lambda opened, feeds, clock, tolerance, max_seconds, model_of: (per_session, turns))
    before, after = timing.measure_models([tiny_residual_net(), tiny_residual_net()], LatencySettings(threads=2),
                                          {}, sessions=1)
    assert before.ratio is None and after.share_of(before)[0] == pytest.approx(0.5)
    assert Measurement.from_dict(after.to_dict()) == after
    before, after = timing.measure_models([tiny_residual_net(), tiny_residual_net()], LatencySettings(threads=1),
                                          {}, sessions=1)
    assert after.ratio is None and after.share_of(before)[0] == pytest.approx(0.375)
    # ...unless asked for paired turns, as the latency table's copies are on both clocks
    before, after = timing.measure_opened([object(), object()], [{}, {}], 2, "cpu", paired=True)
    assert after.share_of(before)[0] == pytest.approx(0.5)


class _VirtualClock:
    """The clocks timing.py reads, advanced only by the sessions' runs: a loaded machine's sleeps
    overshoot by more than the runs being timed (this test failed once in CI with real sleeps)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    thread_time = perf_counter


class _SpellSession:
    """A run of `seconds` on `clock`, twice as long in every other 0.3 s spell of it (a round of two
    turns takes about 0.06 s)."""

    def __init__(self, seconds, clock):
        self.seconds, self.clock = seconds, clock

    def run(self, outputs, feeds):
        self.clock.now += self.seconds * (2 if int(self.clock.now / 0.3) % 2 else 1)


def test_a_paired_measurement_ends_once_the_shares_are_known(monkeypatch):
    """Spells of half speed leave each session's median unknown (half its runs on either speed),
    but the share of the reference's time is known in a few rounds: the measurement stops there."""
    import morphnet_onnx.cost.timing as timing

    clock = _VirtualClock()
    clock.now = 0.05  # the warm-ups end just before the speed changes: the first rounds see both speeds
    monkeypatch.setattr(timing, "time", clock)
    monkeypatch.setattr(timing, "SETTLE_SECONDS", 0.01)
    sessions = [_SpellSession(0.002, clock), _SpellSession(0.001, clock)]
    measured, turns = timing.measure_sessions(sessions, [{}, {}], "wall", tolerance=0.1, max_seconds=30.0,
                                              model_of=[0, 1])
    assert clock.now < 15.0  # ended on the shares, long before max_seconds
    assert max(m.noise for m in measured) > 0.1, measured  # not every median is known: the shares ended it
    assert np.median(timing.paired_shares(turns, [0, 1])[1]) == pytest.approx(0.5, rel=0.05)


def test_sessions_alternate_model_by_model_so_every_turn_has_a_reference_beside_it(monkeypatch):
    import morphnet_onnx.cost.timing as timing

    opened = []
    monkeypatch.setattr(timing, "timing_session", lambda model, settings: opened.append(model) or model)
    monkeypatch.setattr(timing, "timing_feeds", lambda session, shapes, batch: {})
    monkeypatch.setattr(timing, "measure_sessions", lambda sessions, feeds, clock, tolerance, max_seconds, model_of: (
        [timing.Measurement(1.0, 0.0, 1, clock) for _ in sessions], []))
    timing.measure_models(["a", "b", "c"], LatencySettings(threads=2), {}, sessions=2)
    assert opened == ["a", "b", "c"] * 2


@pytest.mark.parametrize("threads", [2, 1])
def test_a_table_times_each_copy_against_the_full_model(monkeypatch, cache, threads):
    """Each copy measured beside the full model (one session of it kept for every copy), on the wall
    clock and on the thread's CPU clock alike: its time is its paired share times the full model's
    measured time, so a speed change between copies moves no copy."""
    import morphnet_onnx.surgery.latency as surgery_latency

    alone, beside = [], []

    def measure_alone(models, settings, shapes, tolerance, max_seconds, sessions):
        alone.append(len(models))
        return [Measurement(4e-3, 0.01, 9, settings.clock)]

    def measure_beside(opened, feeds, models, clock, tolerance, max_seconds, paired):
        beside.append((len(opened), id(opened[0]), paired))
        return [Measurement(9e-3, 0.01, 9, clock), Measurement(3e-3, 0.02, 9, clock, 0.25, 0.02)]

    monkeypatch.setattr(surgery_latency, "measure_models", measure_alone)
    monkeypatch.setattr(surgery_latency, "measure_opened", measure_beside)
    table = latency_table(tiny_residual_net(), LatencySettings(threads=threads), cache=False, copies=2)
    assert alone == [1]  # the full model alone; the floor (3 sessions each) and the copies beside it
    assert [count for count, _, _ in beside] == [6, 2, 2] and len({first for _, first, _ in beside}) == 1
    assert all(paired for _, _, paired in beside)
    assert table.floor.median_s == pytest.approx(1e-3) and table.floor.ratio == 0.25
    assert [s["measured_s"] for s in table.structures] == pytest.approx([4e-3, 1e-3, 1e-3, 1e-3])


class _SpinningSession:
    """A session whose runs take 1 ms, or 4 ms within 0.2 s of another session's run: the threads of
    a session of several threads keep spinning after its run and take the next session's cores."""

    last: dict = {}

    def __init__(self, name):
        self.name, self.calls = name, 0

    def run(self, outputs, feeds):
        self.calls += 1
        other = [t for name, t in self.last.items() if name != self.name]
        now = time.perf_counter()
        time.sleep(0.004 if other and now - max(other) < 0.2 else 0.001)
        self.last[self.name] = time.perf_counter()


def test_the_wall_clock_times_a_session_after_the_last_ones_threads_stopped_spinning(monkeypatch):
    import morphnet_onnx.cost.timing as timing

    _SpinningSession.last = {}
    monkeypatch.setattr(timing, "SETTLE_SECONDS", 0.25)
    sessions = [_SpinningSession(name) for name in "ab"]
    measured, _ = timing.measure_sessions(sessions, [{}, {}], "wall", tolerance=0.2, max_seconds=1.0)
    assert all(m.median_s < 0.0025 for m in measured), [m.median_s for m in measured]
    # one session alone has nothing to wait for: it is not run untimed between its rounds
    monkeypatch.setattr(timing, "SETTLE_SECONDS", 10.0)
    alone = _SpinningSession("c")
    timing.measure_sessions([alone], [{}], "wall", tolerance=0.2, max_seconds=1.0)
    assert alone.calls < 1000


def test_nnls_matches_a_search_over_the_active_sets():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.normal(size=(12, 4)), rng.normal(size=12)
        x = nnls(a, b)
        assert (x >= 0).all()
        best = min(np.linalg.norm(a @ y - b) for y in _active_set_solutions(a, b))
        assert np.linalg.norm(a @ x - b) <= best + 1e-9


def _active_set_solutions(a, b):
    for subset in itertools.product([0, 1], repeat=a.shape[1]):
        use = np.array(subset, dtype=bool)
        y = np.zeros(a.shape[1])
        if use.any():
            y[use] = np.linalg.lstsq(a[:, use], b, rcond=None)[0]
        if (y >= 0).all():
            yield y


def test_a_unit_fit_recovers_a_staircase_and_its_fast_widths():
    truth = UnitFit("conv", 64, 64, coef=[1e-5, 2e-8, 0, 0, 1e-8, 0, 0, 0])  # levels (4, 16): 4 off costs more
    samples = [[i, o, float(unit_seconds(truth, i, o, 16, (4, 16))[0]), 1.0, k]
               for k, (i, o) in enumerate(itertools.product([7, 16, 20, 31, 32, 45, 48, 64], [16, 33, 64]))]
    fitted = UnitFit("conv", 64, 64, samples=samples)
    fit_unit(fitted, 16, (4, 16))
    widths = np.arange(65)
    curve = unit_seconds(fitted, widths, np.full(65, 64), 16, (4, 16))
    assert np.allclose(curve, unit_seconds(truth, widths, np.full(65, 64), 16, (4, 16)), rtol=1e-6)
    assert worth_having(curve) == [16, 32, 48, 64]
    assert unit_seconds(fitted, 0, 64, 16, (4, 16))[0] == 0.0  # a unit with no channel costs nothing


def test_a_floor_copy_far_below_the_model_does_not_bend_the_fits():
    """ConvNeXt-Tiny's depthwise convs: counts off a multiple of 4 take 3.5x the time per channel, and
    the floor copy (0.001x of the model) measured nothing for them. Weighed relative to its own time
    the floor outweighs every other copy and pins the fit near zero; floored at LEAST_WEIGHED_SHARE
    of the full model's time, the fit follows the copies."""
    truth = UnitFit("dw", 1, 96, coef=[0, 1e-5, 0, 0, 2.5e-5, 0])  # levels (4,)
    widths = [96, 1, 68, 20, 46, 96, 64, 44, 48, 64, 96, 39, 10, 40, 62, 24, 64, 96]
    seconds = [0.0 if c == 1 else float(unit_seconds(truth, 1, c, 1, (4,))[0]) for c in widths]
    measured = [1e-6 if c == 1 else s + 1e-4 for c, s in zip(widths, seconds)]
    grid = np.array([16, 30, 46, 64, 96])

    def fitted_error(weights):
        fitted = UnitFit("dw", 1, 96, samples=[[1, c, t, w, k] for k, (c, t, w) in enumerate(zip(widths, seconds,
                                                                                                    weights))])
        fit_unit(fitted, 1, (4,))
        return unit_seconds(fitted, np.ones(5), grid, 1, (4,)) / unit_seconds(truth, np.ones(5), grid, 1, (4,)) - 1

    assert np.abs(fitted_error(copy_weights(measured, measured[0]))).max() < 0.05
    assert np.abs(fitted_error(1 / np.asarray(measured))).min() > 0.5  # the weights before


def test_the_reported_fit_error_weighs_the_copies_as_the_fit_does():
    """A floor copy at 0.001x of the model predicted 2.5x its time is 0.15% of the full model off: it
    counts as 7.5% (of 2% of the full model's time), not as 150%."""
    structures = [{"copy": c, "measured_s": m, "fitted_s": f, "noise": 0.01} for c, m, f in
                  (("full", 1.0, 1.0), ("floor", 0.001, 0.0025), ("random 1", 0.5, 0.51))]
    table = LatencyTable("k", "m", LatencySettings(threads=1), "1.19.2", "here", {}, structures=structures)
    error = table.fit_error()
    assert error["max"] == pytest.approx(0.075) and error["copies"] == 3
    assert error["rms"] == pytest.approx(np.sqrt((0.075 ** 2 + 0.02 ** 2) / 3))


def test_kernels_are_attributed_to_the_ops_of_the_original_graph():
    loaded, analysis = prepare(tiny_residual_net())
    attribution = Attribution(loaded.model, analysis)
    names = {n.name: n for n in loaded.model.graph.node}
    bn_out = names["stem_bn"].output[0]
    relu_out = next(n.output[0] for n in loaded.model.graph.node if n.input and n.input[0] == bn_out)
    kernels = [("ReorderInput", "ReorderInput", 1.0), (relu_out + "_nchwc", "Conv", 2.0),
               ("ReorderOutput_token_3", "ReorderOutput", 0.5), ("mid", "FusedConv", 3.0),
               ("pool", "GlobalAveragePool", 0.25), ("mystery", "Custom", 0.125)]
    claimed = attribution.attribute(kernels)
    assert claimed["stem"] == [3.5, 3]  # its kernel, the reorders before and after it
    assert claimed["mid"] == [3.0, 1]
    assert claimed[None] == [0.125, 1]
    assert claimed["join"] == [0.25, 1]  # pooling passes its time to the op writing its channels
    # onnxruntime's fusions rename the node they keep (AlexNet's classifier was unattributed)
    renamed = ("fused fc", "fused fc/MatMulAddFusion/", "fc/MatMulScaleFusion/")
    assert [attribution.unit(kernel) for kernel in renamed] == ["fc"] * 3
    # a kernel onnxruntime made and named after its op type reads the one before it (ViT's BiasGelu)
    made = attribution.attribute([("fused fc", "FusedGemm", 1.0), ("BiasGelu_token_7", "BiasGelu", 0.5)])
    assert made["fc"] == [1.5, 2] and made[None] == [0.0, 0]


def test_a_table_is_measured_cached_and_read_back(table_file, cache):
    model, path, table = table_file
    # one assert per fact, with the values (a measured fit on a tiny net varies from run to run)
    assert table.full.median_s > 0, table.full
    assert 0 < table.floor.median_s <= table.full.median_s * 1.5, (table.floor, table.full)
    assert {"stem", "mid", "fc"} <= set(table.units), sorted(table.units)
    assert len(table.structures) == 5, len(table.structures)
    assert json.loads(path.read_text())["key"] == table.key
    again = latency_table(model, LatencySettings(threads=1), table_path=path)
    assert again.origin == "file" and again.key == table.key
    with pytest.raises(MorphNetError, match="another model or other settings"):
        latency_table(model, LatencySettings(threads=2), table_path=path)
    report = inspect(model, hardware=again)
    costs = report.costs
    assert costs.latency_s == pytest.approx(again.offset_s + sum(o.latency_s for o in costs.ops))
    stem = next(g for g in report.analysis.groups if "stem" in g.sources)
    assert report.fast_widths[stem.id][-1] == stem.width, report.fast_widths[stem.id]
    # At width 64 the fit finds time in the stem's width (44-52 us removable in 8 tables of 8; at width
    # 16 its ops cost their fixed overhead and 2 fits in 25 found none)...
    assert report.removable_latency[stem.id] > 0, (report.removable_latency, again.units["stem"])
    assert costs.groups[stem.id].marginal_latency_s > 0
    # ...and more time per channel in the fit shows as more removable.
    again.units["stem"].coef[1] += 1e-8  # seconds per input x output channel position
    sloped = inspect(model, hardware=again)
    assert sloped.removable_latency[stem.id] > report.removable_latency[stem.id], sloped.removable_latency


def test_the_cache_is_keyed_by_the_graph_not_its_weights(cache, tmp_path):
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(tiny_residual_net(), str(first))
    retrained = tiny_residual_net()
    for tensor in retrained.graph.initializer:
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) * 2, tensor.name))
    onnx.save(retrained, str(second))
    measured = latency_table(first, LatencySettings(threads=1), copies=2)
    assert measured.origin == "measured" and (cache / f"{measured.key}.json").exists()
    assert latency_table(second, LatencySettings(threads=1), copies=2).origin == "cache"


def test_a_table_of_an_earlier_format_is_refused_with_the_reason(table_file, tmp_path):
    """A 1-thread table (CPU clock) is of CPU_FORMAT, a wall-clock one of FORMAT; a table of an earlier
    format (a floor copy measured before the floor's repair, a wall-clock table timed its old way) is
    refused with the reason."""
    model, path, table = table_file
    doc = json.loads(path.read_text())
    assert doc["format"] == CPU_FORMAT == 4 and doc["settings"]["threads"] == 1
    assert load_table(path).key == table.key
    (tmp_path / "old.json").write_text(json.dumps(dict(doc, format=3)))
    with pytest.raises(MorphNetError, match="another version of morphnet-onnx .format 3, this one reads 4"):
        load_table(tmp_path / "old.json")
    wall = dict(doc, format=5, settings=dict(doc["settings"], threads=0, clock="wall"))
    (tmp_path / "wall.json").write_text(json.dumps(wall))
    with pytest.raises(MorphNetError, match="another version of morphnet-onnx .format 5, this one reads 6"):
        load_table(tmp_path / "wall.json")


def test_measure_latency_compares_models_in_alternated_rounds(tmp_path):
    small, big = tmp_path / "small.onnx", tmp_path / "big.onnx"
    onnx.save(tiny_residual_net(8), str(small))
    onnx.save(tiny_residual_net(64), str(big))
    before, after = measure_latency([big, small], LatencySettings(threads=1))
    assert before.runs >= 9 and after.runs >= 9 and before.clock == "cpu"
    assert after.median_s < before.median_s


def test_a_model_with_a_fixed_batch_is_timed_and_reported_at_that_batch(cache, tmp_path):
    """A static export (torch's dynamo exporter without dynamic_shapes) runs at its batch only: the
    default batch 1 becomes it, in the table's settings, key and description; another is refused."""
    fixed = tmp_path / "fixed.onnx"
    onnx.save(tiny_residual_net(batch=4), str(fixed))
    table = latency_table(fixed, LatencySettings(threads=1), copies=2)
    assert table.settings.batch == 4 and table.name == "measured: CPUExecutionProvider, 1 thread, batch 4"
    assert latency_table(fixed, LatencySettings(threads=1, batch=4), copies=2).origin == "cache"
    with pytest.raises(MorphNetError, match="fixed batch of 4, so it cannot be timed at batch 2"):
        latency_table(fixed, LatencySettings(threads=1, batch=2), copies=2)
    with pytest.raises(MorphNetError, match="fixed batch of 4"):
        measure_latency([fixed], LatencySettings(threads=1, batch=3))
    symbolic = tiny_residual_net()
    assert LatencySettings(batch=2).for_model(symbolic, "x").batch == 2


def test_allowed_widths_make_the_blocks_decide_ranks():
    vector = np.linspace(1, 0.1, 40)
    blocks = _ranked_blocks({3: vector}, {3: [16, 32, 40]})
    assert [len(b[3]) for b in blocks] == [16, 16, 8]
    assert [len(b[3]) for b in _ranked_blocks({3: vector}, 16)] == [16, 16, 8]


def test_a_budget_below_the_measured_floor_is_refused_before_training(table_file):
    _, _, table = table_file
    full = table.full.median_s
    floor_share = table.floor.median_s / full
    with pytest.raises(MorphNetError, match="below what the runtime allows"):
        check_floor(table, full, full * floor_share * 0.5, 0.0, "0.01x")
    # above the floor passes (at width 16 the floor once measured at 0.998x of the model in one table)
    check_floor(table, full, full * max(0.99, floor_share + 0.01), 0.0, "0.99x")
    # a table whose fit puts the floor above the measured one binds, and the message says why
    above = (floor_share + 1) / 2  # between the measured floor and the full model
    with pytest.raises(MorphNetError, match=rf"the latency table puts that structure at {above:.3f}x .its fit is "
                                            r"off by \d+% on copies it did not see.: measure it again on a quiet"):
        check_floor(table, full, full * (floor_share + above) / 2, full * above, "between")


def test_family_budgets_and_phases():
    assert [b.text for b in parse_budgets("latency", "0.75x, 0.5x,0.25x")] == ["0.75x", "0.5x", "0.25x"]
    for bad in ("0.5x", "0.5x,1ms", "0.5x,0.5x", "0.5x,,0.2x"):
        with pytest.raises(MorphNetError):
            parse_budgets("latency", bad)
    assert str(member_path("out/small.onnx", "0.5x")) == "out/small_0.5x.onnx"
    assert phase_ends(1000, 3) == [600, 800, 1000]
    assert phase_ends(100, 2) == [75, 100]
    assert phase_ends(80, 2) == [50, 80] and phase_ends(30, 2) == [25, 30]  # a later phase keeps an update
    assert phase_ends(150, 3) == [100, 125, 150]
    assert phase_windows([600, 800, 1000], (100, 400)) == [(100, 400), (600, 700), (800, 900)]


def test_the_phased_controller_steps_its_target_down(table_file):
    model, _, table = table_file
    loaded, analysis = prepare(model)
    regs = group_regularizers(analysis, loaded, "auto", "max")
    controller = PhasedController(analysis, loaded, regs, "latency", 3.0, None, 0.01, table, total_steps=100,
                                  targets=[3.0, 2.0, 1.0], ends=[50, 75, 100])
    params = {m.param: onnx.numpy_helper.to_array(t) for r in regs for m in r.members
              for t in loaded.model.graph.initializer if t.name == m.param}
    seen = []
    for step in (0, 25, 50, 75):
        controller(step, lambda: params)
        seen.append(controller.target)
    assert seen == [3.0, 3.0, 2.0, 1.0]
    # holding: each phase's window, from the previous budget's cost down to its own
    windows = [(10, 40), (50, 68), (75, 93)]
    held = PhasedController(analysis, loaded, regs, "latency", 3.0, None, 0.01, table, total_steps=100,
                            targets=[3.0, 2.0, 1.0], ends=[50, 75, 100], hold=True, windows=windows)
    seen = []
    for step in (25, 50, 75):
        held(step, lambda: params)
        seen.append((held.hold_window, held.hold_start))
    assert seen == [((10, 40), None), ((50, 68), 3.0), ((75, 93), 2.0)]


def test_a_latency_budgets_hold_comes_down_geometrically_in_flops(table_file):
    """Halfway through the hold window, a latency budget's held structure keeps about the geometric
    mean of the full model's FLOPs and those of the structure at the budget (decided on FLOPs):
    geometric in latency, most of the cut would wait for the window's end."""
    model, _, table = table_file
    loaded, analysis = prepare(model)
    regs = group_regularizers(analysis, loaded, "auto", "max")
    params = spread_gates(loaded, regs)
    resources = []

    def decide_at(p, goal, in_resource="latency"):
        resources.append(in_resource)
        return decide(analysis, loaded, regs, p, 0.01, in_resource, goal, table)

    def flops(decision):
        return compute_costs(analysis, loaded, table, alive=decision.structure.element_alive(analysis)).flops

    full = compute_costs(analysis, loaded, table)
    target = 0.5 * full.latency_s
    controller = BudgetController(analysis, loaded, regs, "latency", target, None, 0.01, table, hold=True,
                                  decide_at=decide_at, hold_window=(0, 100))
    controller(50, lambda: params)
    goal = np.sqrt(full.flops * flops(decide_at(params, target)))
    assert "flops" in resources and controller.log[-1]["held_unit"] == "flops"
    held = controller.log[-1]["held_to"]
    assert held <= goal and held >= 0.6 * goal, (held, goal, full.flops)
    assert controller.held_count() > 0


def test_cli_inspect_shows_the_table(table_file, capsys):
    model, path, _ = table_file
    assert main(["inspect", str(model), "--hardware", "measure", "--latency-threads", "1",
                 "--latency-table", str(path)]) == 0
    out = capsys.readouterr()
    assert "fast widths" in out.out and "measured: full model" in out.out
    assert "latency table from the file" in out.err
    assert main(["inspect", str(model), "--latency-table", str(path)]) == 2  # measured at other threads
    assert "another model or other settings" in capsys.readouterr().err
    assert main(["shrink", str(model), "--data", "x.npz", "--budget-latency", "0.5x", "--round-to", "auto",
                 "-o", str(path.parent / "s.onnx")]) == 2
    assert "add --hardware measure" in capsys.readouterr().err
    assert main(["inspect", str(model), "--hardware", "measure", "--provider", "NoSuchProvider"]) == 2
    assert "not in this onnxruntime build" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_resnet_table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_resnet")
    path = folder / "table.json"
    latency_table(TINY, LatencySettings(threads=1), table_path=path, cache=False, copies=3)
    return folder, path


@pytest.mark.slow
def test_shrink_lands_on_a_measured_budget_with_fast_widths(tiny_resnet_table):
    folder, table_path = tiny_resnet_table
    data = random_dataset(folder, 64, 32, val_key="x")
    out = folder / "small.onnx"
    result = shrink(TINY, data / "train.npz", out, val=data / "val.npz", budget=Budget("latency", "0.6x"),
                    hardware="measure", latency_threads=1, latency_table=str(table_path), round_to="auto",
                    force=True, options=TrainOptions(steps=6, batch_size=16, progress=False))
    onnx.checker.check_model(str(out), full_check=True)
    measured = result.latency
    assert measured["landing"] and measured["goal"] == pytest.approx(0.6, rel=1e-6)
    assert measured["written_s"] > 0 and measured["clock"] == "cpu"
    assert {"ratio", "noise", "predicted_ratio", "disagreement"} <= set(measured)
    table = load_table(table_path)
    loaded, analysis = prepare(TINY)
    allowed = fast_widths(table, analysis)
    for group in analysis.prunable_groups:
        width = int(result.structure.alive[group.id].sum())
        assert width in allowed[group.id] + [0], (group.id, width, allowed[group.id])


@pytest.mark.slow
def test_the_cli_says_what_was_measured_and_what_the_table_said(tiny_resnet_table, capsys):
    folder, table_path = tiny_resnet_table
    data = random_dataset(folder, 64, 32, val_key="x")
    assert main(["shrink", str(TINY), "--data", str(data / "train.npz"), "--val", str(data / "val.npz"),
                 "--budget-latency", "0.6x", "--hardware", "measure", "--latency-threads", "1", "--latency-table",
                 str(table_path), "--round-to", "auto", "--steps", "60", "--batch-size", "16", "--force",
                 "--no-progress", "-o", str(folder / "cli_small.onnx")]) == 0
    out = capsys.readouterr().out
    assert "latency (table): learned structure" in out  # the table's view, labelled as such
    assert "latency measured while training (step 25): the hold's table target 0.600x -> " in out
    assert "latency measured (CPUExecutionProvider, 1 thread, batch 1)" in out and "budget 0.600x" in out
    diff_line = next(line for line in out.splitlines() if line.startswith("diff: FLOPs"))
    assert "latency" not in diff_line  # no roofline beside the measurement


@pytest.mark.slow
def test_a_family_writes_one_model_per_budget_from_one_run(tiny_resnet_table):
    folder, _ = tiny_resnet_table
    data = random_dataset(folder, 64, 32, val_key="x")
    result = shrink_family(TINY, data / "train.npz", folder / "fam.onnx", val=data / "val.npz",
                           budgets=parse_budgets("flops", "0.5x,0.8x"),
                           method=ShrinkOptions(budget=Budget("flops", "0.5x"), force=True),
                           options=TrainOptions(steps=100, batch_size=16, progress=False))
    assert [m["budget"] for m in result.members] == ["0.8x", "0.5x"]  # largest first
    # the run takes 0.8 of one shrink's 100 steps, the two fine-tunes 35 each: 1.5x in all
    assert [m["decided_at_step"] for m in result.members] == phase_ends(80, 2) == [50, 80]
    assert result.steps == 80 and result.finetune_steps == 35 and result.total_steps == 150
    for member in result.members:
        assert member["cost_ratio"] <= float(member["budget"].rstrip("x")) + 1e-9
        onnx.checker.check_model(member["output"], full_check=True)


def test_the_landing_brackets_the_budget_once_tries_fall_on_both_sides():
    first = {"table_target_s": 1.0, "achieved": 0.6}
    assert _next_target([first], 0.5) == pytest.approx(1.0 * 0.5 / 0.6)  # scaled by how far it landed
    second = {"table_target_s": 0.5, "achieved": 0.3}
    between = _next_target([first, second], 0.45)
    assert 0.5 < between < 1.0
    assert between == pytest.approx(0.5 * 2 ** (np.log(0.45 / 0.3) / np.log(0.6 / 0.3)))


def test_a_target_that_repeats_a_tried_structure_moves_toward_the_other_side(monkeypatch):
    """Structures by table target: A (0.17x) below 1.2, B (0.24x) in [1.2, 1.25), C (0.30x) above.
    Tries at A then C; the interpolated target (1.12) gives A again: it moves halfway toward C's
    target and finds B, within the budget, where the tries used to end on A (-32%)."""
    ratios = {0: 0.17, 1: 0.24, 2: 0.30}

    class Decision:
        def __init__(self, target):
            self.kind = 0 if target < 1.2 else 1 if target < 1.25 else 2
            self.structure = type("Structure", (), {"alive": {0: np.array([self.kind])}})()
            self.cost = target

    monkeypatch.setattr(landing, "decide", lambda *args: Decision(args[6]))
    monkeypatch.setattr(landing, "cut_for_training", lambda loaded, analysis, structure: (
        type("Surgery", (), {"model": ratios[int(structure.alive[0][0])]})()))
    monkeypatch.setattr(landing, "compare", lambda original, model, table, shapes: (
        Measurement(1e-3, 0.005, 50, "cpu"), Measurement(model * 1e-3, 0.005, 50, "cpu")))
    result = landing.land(None, None, [], {}, 0.0, 0.25, 1.0, True, None, 1, None, {}, first_target=0.9)
    assert [round(t["achieved"], 2) for t in result.tries] == [0.17, 0.3, 0.24]
    assert [len(t["repeated_targets_s"]) for t in result.tries] == [0, 0, 1]  # the target that gave A again
    assert result.decision.kind == 1
    # all tries on one side: a repeat ends them (nothing known to move toward)
    assert landing._past_repeat([{"achieved": 0.17, "table_target_s": 0.9}], 0, 1.1, 0.2425) is None


def test_a_noisy_landing_measurement_is_taken_again_and_the_least_noisy_kept(monkeypatch):
    def pair(ratio, noise):
        return [Measurement(1e-3, noise, 50, "wall"), Measurement(ratio * 1e-3, noise, 50, "wall")]

    table = type("Table", (), {"settings": LatencySettings()})()
    for takes, expected, calls in (([pair(0.49, 0.08), pair(0.53, 0.01)], 0.53, 2),
                                   ([pair(0.49, 0.08), pair(0.52, 0.06), pair(0.50, 0.07)], 0.52, 3),
                                   ([pair(0.51, 0.02), pair(0.40, 0.01)], 0.51, 1)):
        queue = list(takes)
        monkeypatch.setattr(landing, "measure_models", lambda *args, **kwargs: queue.pop(0))
        before, after = landing.compare(None, None, table, {})
        assert after.median_s / before.median_s == pytest.approx(expected)
        assert len(takes) - len(queue) == calls


def test_the_report_warns_when_a_model_ran_at_another_speed_than_earlier_in_the_run():
    wall = type("Table", (), {"settings": LatencySettings(), "full": Measurement(1.5e-4, 0.01, 50, "wall")})()
    tries = [{"original_s": 1.41e-4, "measured_s": 3.0e-5, "table_target_s": 1.0},
             {"original_s": 1.42e-4, "measured_s": 3.5e-5, "table_target_s": 2.0}]
    record = {"landing": tries, "original_s": 3.38e-4, "written_s": 3.6e-5, "noise": 0.017}
    drift = machine_drift(record, wall, kept_target_s=2.0)
    assert [m["model"] for m in drift["moved"]] == ["the original model"]
    assert drift["moved"][0]["change"] == pytest.approx(3.38 / 1.415 - 1)
    assert "0.1415 ms in the landing's tries and 0.338 ms now (+139%)" in drift["warning"]
    assert "--latency-threads 1" in drift["warning"]
    # the original steady, the written model 35% faster than its structure's try (ResNet-50 0.25x)
    record = {"landing": tries, "original_s": 1.45e-4, "written_s": 2.3e-5, "noise": 0.02}
    drift = machine_drift(record, wall, kept_target_s=2.0)
    assert "the written model measured 0.035 ms when its structure was tried and 0.023 ms now (-34%)" \
        in drift["warning"]
    assert machine_drift(record, wall, kept_target_s=3.0) is None  # no try of its structure: the original only
    assert machine_drift(dict(record, written_s=3.4e-5), wall, kept_target_s=2.0) is None
    assert machine_drift(dict(record, written_s=3.1e-5, noise=0.06), wall, kept_target_s=2.0) is None  # 3x noise
    drift = machine_drift({"landing": [], "original_s": 2.0e-4, "written_s": 1e-4, "noise": 0.01}, wall)
    assert "when the latency table was measured" in drift["warning"]
    cpu = type("Table", (), {"settings": LatencySettings(threads=1), "full": None})()
    assert machine_drift({"landing": [], "original_s": 2.0e-4, "written_s": 1e-4, "noise": 0.01}, cpu) is None
    assert "--latency-threads" not in machine_drift(dict(record, original_s=2.0e-4), cpu, 1.0)["warning"]


def test_random_copies_of_shufflenet_cut_into_models_onnxruntime_loads():
    """Regression (`inspect --hardware measure` on torchvision's ShuffleNet v2: "onnxruntime cannot
    load the model for timing"): a copy kept each group's first channels, which a channel shuffle
    sends to one half of the next split, and the other half's branch read a removed Slice."""
    loaded = load(TORCHVISION_DIR / "shufflenet_v2_x1_0_bn.onnx")
    loaded.model = materialize_weights(loaded.model, 0)
    analysis = analyze(loaded)
    rng = np.random.default_rng(0)
    for _ in range(3):
        structure = random_copy(loaded, analysis, rng)
        assert not Surgeon(loaded, analysis, structure).structural_problems()
        make_session(timing_cut(loaded, analysis, structure))


def test_table_copies_keep_each_layer_norm_one_op_as_shrink_writes_it():
    """The table times what `shrink` writes: a narrowed LayerNormalization stays one op (cut_for_training),
    where written out exactly it took 15 that no attribution rule claimed (40-46% of a tiny
    transformer table's kernel time unattributed)."""
    loaded = load(REPO / "tests" / "data" / "transformers" / "vit_torchscript.onnx")
    analysis = analyze(loaded)
    norms = sum(n.op_type == "LayerNormalization" for n in loaded.model.graph.node)
    structure = random_copy(loaded, analysis, np.random.default_rng(0))
    stream = max(analysis.prunable_groups, key=lambda g: g.width)
    assert norms > 0 and not structure.alive[stream.id].all()
    cut = timing_cut(loaded, analysis, structure)
    assert sum(n.op_type == "LayerNormalization" for n in cut.graph.node) == norms
    assert not any(n.op_type == "ReduceSum" for n in cut.graph.node)
