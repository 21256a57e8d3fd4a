"""`prune`: apply a Structure to a model and write the smaller model."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..analysis.gates import gate_magnitudes
from ..analysis.groups import Analysis
from ..analysis.walk import analyze
from ..cost.resources import compute_costs
from ..errors import MorphNetError, first_line
from ..loading.external import needs_a_file, on_disk
from ..loading.model import LoadedModel, load
from ..loading.placeholders import materialize_weights
from ..loading.runtime import make_session
from ..loading.shapes import InputShapes
from ..loading.writing import refuse_overwriting, save_model
from .apply import SurgeryResult, apply_structure
from .structure import Structure, load_structure, round_structure, structure_from_dict


@dataclass
class PruneResult:
    model: onnx.ModelProto
    structure: Structure
    analysis: Analysis
    flops_before: float
    flops_after: float
    params_before: int
    params_after: int
    notes: list[str] = field(default_factory=list)
    removed_ops: list[str] = field(default_factory=list)


def verify_model(model: onnx.ModelProto, name: str):
    """Every model we write passes onnx's full check and loads in onnxruntime (the session is returned).
    A model that keeps its weights on disk (or is over 2 GB) is checked as a file, without a copy."""
    big = needs_a_file(model)
    source = on_disk(model) if big else model
    try:
        onnx.checker.check_model(str(source) if big else source, full_check=True)
    except Exception as exc:
        raise MorphNetError(f"internal: {name} fails onnx's checker: "
                            f"{first_line(exc, 300)}") from exc
    return make_session(source)


def check_round_to(round_to) -> None:
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise MorphNetError(f"--round-to {round_to}: must be a whole number, 1 or more")


def prepare(model, input_shapes: InputShapes | None = None, keep: list[str] | None = None,
            seed: int | None = None) -> tuple[LoadedModel, Analysis]:
    """Load (placeholder weights made real), analyze."""
    loaded = load(model, input_shapes)
    loaded.model = materialize_weights(loaded.model, seed)
    return loaded, analyze(loaded, keep=keep)


def prune_loaded(loaded: LoadedModel, analysis: Analysis, structure: Structure, round_to: int = 1,
                 approximate_borders: bool = False, approximate_norms: bool = False) -> SurgeryResult:
    if round_to > 1:
        structure = round_structure(structure, analysis, gate_magnitudes(analysis, loaded), round_to)
    return apply_structure(loaded, analysis, structure, approximate_borders, approximate_norms)


def cut_for_training(loaded: LoadedModel, analysis: Analysis, structure: Structure) -> SurgeryResult:
    """The cut a training run continues from (`shrink`, a family's members, `expand`) and what the
    latency table and the landing time: the approximations training recovers from are taken, so that
    what is trained and timed is the narrower network of the same architecture."""
    return apply_structure(loaded, analysis, structure, approximate_borders=True, approximate_norms=True)


def prune(model: str | os.PathLike | onnx.ModelProto, structure, output: str | os.PathLike | None = None,
          input_shapes: InputShapes | None = None, keep: list[str] | None = None, round_to: int = 1,
          approximate_borders: bool = False, approximate_norms: bool = False) -> PruneResult:
    """Remove the channels a structure marks dead; write the result to `output` if given.

    >>> result = prune("resnet50.onnx", "structure.json", "resnet50_pruned.onnx")   # doctest: +SKIP
    >>> result.flops_after / result.flops_before                                      # doctest: +SKIP
    0.52

    `structure` is a path to a structure JSON file, its parsed dict, or a `Structure`. The result
    computes exactly what the model computes with the removed channels' gates at zero (norm scales,
    or filters); channels for which that is impossible stay, unless `approximate_borders`.
    `approximate_norms` keeps a LayerNormalization over a narrowed width as one op over the kept
    channels (as `shrink` writes it) instead of writing it out exactly (apply_structure).
    """
    check_round_to(round_to)
    refuse_overwriting({"-o": output}, [model, structure])
    loaded, analysis = prepare(model, input_shapes, keep)
    if isinstance(structure, Structure):
        chosen = structure
    elif isinstance(structure, dict):
        chosen = structure_from_dict(structure, analysis, loaded)
    else:
        chosen = load_structure(structure, analysis, loaded)
    result = prune_loaded(loaded, analysis, chosen, round_to, approximate_borders, approximate_norms)
    name = f"the pruned model {output}" if output else "the pruned model"
    verify_model(result.model, name)
    before = compute_costs(analysis, loaded)
    after_loaded = load(result.model, input_shapes)
    after = compute_costs(analyze(after_loaded), after_loaded)
    if output is not None:
        inputs = [loaded.path] if loaded.path else []
        save_model(result.model, Path(output), inputs=inputs)
    return PruneResult(model=result.model, structure=result.structure, analysis=analysis,
                       flops_before=before.flops, flops_after=after.flops, params_before=before.params,
                       params_after=after.params, notes=result.notes, removed_ops=result.removed_ops)
