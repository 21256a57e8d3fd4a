#!/usr/bin/env python3
"""Export torchvision classification models to ONNX (DEV-ONLY tool).

This script is NOT part of the morphnet_onnx library and torch is NOT a runtime
dependency of the project.  It produces test data / benchmark inputs:

* full exports (with weights), ``{model}_{variant}.onnx`` in ``--out``
  (default ``~/.cache/morphnet-onnx/torchvision``, outside the repository);
* "light" copies of every export in ``--light-out`` (default
  ``tests/data/torchvision/``), where every float initializer with more than
  16 elements is replaced by a ``ConstantOfShape`` node, in the same way as
  ``onnx.tools.replace_constants.replace_initializer_by_constant_of_shape``
  (the function used for ``onnx/backend/test/data/light/*.onnx``);
* ``reference.json`` in ``--light-out``: independent FLOP / MAC / parameter
  counts computed with torch (``torch.utils.flop_counter.FlopCounterMode`` and
  forward hooks on ``nn.Conv2d`` / ``nn.Linear``).

Variants:

* ``bn``:     eval model exported with ``training=TrainingMode.PRESERVE`` and
              ``do_constant_folding=False``: BatchNormalization nodes are kept
              (not folded into the preceding Conv).
* ``folded``: default eval export (``training=TrainingMode.EVAL``, constant
              folding on): BatchNormalization is folded into Conv.

Setup (separate venv, never the project's .venv)::

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 onnx==1.17.0 numpy

Run (from the repository root)::

    /work/torchvenv/bin/python tools/export_torchvision.py
    /work/torchvenv/bin/python tools/export_torchvision.py --models resnet18,vit_b_16 --variants bn

Running a subset updates only those models' entries in reference.json.
``--verify`` (needs ``pip install onnxruntime`` in the same venv) compares each
full export with torch at batch 2.  A per-export summary (op counts, sizes)
goes to ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from harness import ZOO  # tools/harness.py

aten = torch.ops.aten

SEED = 0
OPSET = 17
LIGHT_THRESHOLD = 16  # float initializers with more elements become ConstantOfShape
# Fill value of the ConstantOfShape nodes: the default of onnx's
# replace_initializer_by_constant_of_shape (the shipped light models use 0.02).
LIGHT_VALUE = 0.5

REPO_ROOT = Path(__file__).resolve().parent.parent

# name -> (constructor kwargs, input H=W)
MODELS: dict[str, tuple[dict, int]] = {
    "resnet18": ({}, 224),
    "resnet50": ({}, 224),
    "resnext50_32x4d": ({}, 224),
    "wide_resnet50_2": ({}, 224),
    "vgg11": ({}, 224),
    "vgg16_bn": ({}, 224),
    "alexnet": ({}, 224),
    "densenet121": ({}, 224),
    "googlenet": ({"aux_logits": False, "init_weights": True}, 224),
    "inception_v3": ({"aux_logits": False, "init_weights": True}, 299),
    "mobilenet_v2": ({}, 224),
    "mobilenet_v3_small": ({}, 224),
    "mobilenet_v3_large": ({}, 224),
    "mnasnet1_0": ({}, 224),
    "shufflenet_v2_x1_0": ({}, 224),
    "squeezenet1_0": ({}, 224),
    "squeezenet1_1": ({}, 224),
    "efficientnet_b0": ({}, 224),
    "regnet_x_400mf": ({}, 224),
    "regnet_y_400mf": ({}, 224),
    "convnext_tiny": ({}, 224),
    "vit_b_16": ({}, 224),
}
VARIANTS = ("bn", "folded")

FLOAT_TYPES = {
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.DOUBLE,
    TensorProto.BFLOAT16,
}


# --------------------------------------------------------------------------
# model construction / torch reference counts
# --------------------------------------------------------------------------
def build_model(name: str, perturb: bool = True) -> tuple[nn.Module, tuple[int, ...]]:
    kwargs, hw = MODELS[name]
    torch.manual_seed(SEED)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    if perturb:
        perturb_constant_init(model)
    model.eval()
    return model, (1, 3, hw, hw)


@torch.no_grad()
def perturb_constant_init(model: nn.Module) -> int:
    """Give every constant-initialised float tensor (BN/LN weight=1, biases=0,
    running_mean=0, running_var=1, layer scales...) distinct seeded values.

    Without this, the TorchScript exporter's deduplicate-initializers pass
    (by value) merges all equal tensors into one initializer and re-creates
    the others with ``Identity`` nodes (72 Identity nodes in resnet18_bn), a
    graph shape that exports of trained weights never have.  Shapes, FLOPs
    and parameter counts are unchanged.
    """
    gen = torch.Generator().manual_seed(SEED + 1)
    n = 0
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in tensors:
        if not t.is_floating_point() or t.numel() == 0:
            continue
        c = t.flatten()[0].item()
        if not bool((t == c).all()):
            continue
        if name.endswith("running_var"):
            new = c * (0.5 + torch.rand(t.shape, generator=gen))
        elif c != 0.0:
            new = c * (1.0 + 0.1 * torch.randn(t.shape, generator=gen))
        else:
            new = 0.01 * torch.randn(t.shape, generator=gen)
        t.copy_(new.to(t.dtype))
        n += 1
    return n


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def reference_counts(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """Independent counts with torch (batch 1, eval mode).

    flops: FlopCounterMode total (2 x MACs of conv, mm, addmm, bmm, sdpa).
    conv_linear_macs: forward hooks on nn.Conv2d and nn.Linear, plus the
    in/out projections of nn.MultiheadAttention (also reported alone as
    mha_proj_macs); flops - 2 * conv_linear_macs is what the attention
    matmuls (QK^T, AV) add.

    Runs with autograd enabled on purpose: under ``torch.no_grad()``
    ``nn.MultiheadAttention`` takes the fused ``_native_multi_head_attention``
    fast path, which FlopCounterMode does not see into.
    """
    torch.manual_seed(SEED)
    x = torch.randn(*input_shape)

    macs = {"conv_linear": 0, "mha_proj": 0}

    def conv_hook(mod: nn.Conv2d, inp, out):
        k = int(np.prod(mod.kernel_size))
        macs["conv_linear"] += out.numel() * (mod.in_channels // mod.groups) * k

    def linear_hook(mod: nn.Linear, inp, out):
        macs["conv_linear"] += out.numel() * mod.in_features

    def mha_hook(mod: nn.MultiheadAttention, inp, out):
        # nn.MultiheadAttention applies its in-projection (a raw parameter) and
        # its out_proj (an nn.Linear) functionally, so the Linear hook never
        # fires for them: count them here as linear layers.
        q, k, v = inp[:3]
        e = mod.embed_dim
        m = (q.numel() // q.shape[-1]) * e * q.shape[-1]  # q projection
        m += (k.numel() // k.shape[-1]) * e * k.shape[-1]  # k projection
        m += (v.numel() // v.shape[-1]) * e * v.shape[-1]  # v projection
        m += (q.numel() // q.shape[-1]) * e * e  # out_proj
        macs["conv_linear"] += m
        macs["mha_proj"] += m

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.MultiheadAttention):
            handles.append(m.register_forward_hook(mha_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        # FlopCounterMode (torch 2.14) has no formula for the CPU flash-attention
        # kernel that F.scaled_dot_product_attention dispatches to on CPU.
        counter = FlopCounterMode(display=False, custom_mapping={aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops})
        with counter:
            model(x)
    finally:
        for h in handles:
            h.remove()

    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    bn_params = sum(
        p.numel() for m in model.modules() if isinstance(m, bn_types) for p in m.parameters(recurse=False)
    )
    return {
        "input_shape": list(input_shape),
        "flops": int(counter.get_total_flops()),
        "conv_linear_macs": int(macs["conv_linear"]),
        "mha_proj_macs": int(macs["mha_proj"]),
        "params": int(sum(p.numel() for p in model.parameters())),
        "bn_params": int(bn_params),
        "flops_by_op": {str(k): int(v) for k, v in sorted(counter.get_flop_counts()["Global"].items(), key=str)},
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
    }


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------
def export(model: nn.Module, input_shape: tuple[int, ...], variant: str, path: Path) -> None:
    x = torch.randn(*input_shape)
    if variant == "bn":
        training = torch.onnx.TrainingMode.PRESERVE  # model is in eval mode
        folding = False
    elif variant == "folded":
        training = torch.onnx.TrainingMode.EVAL
        folding = True
    else:
        raise ValueError(variant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,  # TorchScript-based exporter
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=training,
            do_constant_folding=folding,
            export_params=True,
        )


# --------------------------------------------------------------------------
# light models (imitates onnx.tools.replace_constants)
# --------------------------------------------------------------------------
def _shape_and_fill(name: str, dims, data_type: int) -> tuple[TensorProto, TensorProto]:
    shape = numpy_helper.from_array(np.array(list(dims), dtype=np.int64), name=f"{name}__SHAPE")
    dtype = helper.tensor_dtype_to_np_dtype(data_type)
    fill = numpy_helper.from_array(np.array([LIGHT_VALUE], dtype=dtype))
    return shape, fill


def make_light(model: onnx.ModelProto, threshold: int = LIGHT_THRESHOLD) -> onnx.ModelProto:
    """Replace float initializers (and float Constant nodes) with > threshold
    elements by ``ConstantOfShape(<name>__SHAPE)`` whose output keeps the name.

    Same layout as onnx's ``replace_initializer_by_constant_of_shape``: the
    shape is an int64 1-D initializer named ``<name>__SHAPE``, the node has no
    name, ``value`` is a 1-element 1-D tensor of the initializer's dtype, the
    ConstantOfShape nodes come first, graph value_info is dropped.  Integer
    initializers are always kept.
    """
    g = model.graph
    new_inits: list[TensorProto] = []
    new_nodes: list[onnx.NodeProto] = []
    removed: set[str] = set()
    for init in g.initializer:
        size = int(np.prod(init.dims))
        if init.data_type not in FLOAT_TYPES or size <= threshold:
            new_inits.append(init)
            continue
        shape, fill = _shape_and_fill(init.name, init.dims, init.data_type)
        new_inits.append(shape)
        new_nodes.append(helper.make_node("ConstantOfShape", [shape.name], [init.name], value=fill))
        removed.add(init.name)
    for node in g.node:
        for att in node.attribute:
            if att.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise NotImplementedError(f"subgraphs not handled (node {node.name!r})")
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = node.attribute[0].t
            if t.data_type in FLOAT_TYPES and int(np.prod(t.dims)) > threshold:
                shape, fill = _shape_and_fill(node.output[0], t.dims, t.data_type)
                new_nodes.append(helper.make_node("Constant", [], [shape.name], value=shape))
                new_nodes.append(helper.make_node("ConstantOfShape", [shape.name], list(node.output), value=fill))
                continue
        new_nodes.append(node)
    graph = helper.make_graph(
        new_nodes,
        g.name,
        [i for i in g.input if i.name not in removed],
        g.output,
        initializer=new_inits,
    )
    light = helper.make_model(
        graph,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        ir_version=model.ir_version,
        doc_string=model.doc_string,
        domain=model.domain,
        model_version=model.model_version,
    )
    if model.metadata_props:
        helper.set_model_props(light, {p.key: p.value for p in model.metadata_props})
    del light.opset_import[:]
    light.opset_import.extend(model.opset_import)
    return light


def verify_onnxruntime(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> float:
    """max|ort - torch| / max|torch| at batch 2 (also checks the dynamic batch dim).

    Relative, because randomly initialised nets can have huge logits
    (inception_v3's trunc_normal(std=0.1) init gives ~1e13).
    """
    import onnxruntime as ort  # optional, only for --verify

    torch.manual_seed(SEED + 2)
    x = torch.randn(2, *input_shape[1:])
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["logits"], {"input": x.numpy()})
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-30))


def check_light(light: onnx.ModelProto) -> None:
    onnx.checker.check_model(light, full_check=True)
    onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True)


# --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="all", help="comma-separated names (default: all)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: bn,folded")
    p.add_argument("--out", default=str(ZOO), help="dir for full exports")
    p.add_argument("--light-out", default=str(REPO_ROOT / "tests/data/torchvision"), help="dir for light exports + reference.json")
    p.add_argument("--verify", action="store_true", help="also run each full export in onnxruntime (pip install onnxruntime) and compare with torch at batch 2")
    p.add_argument("--no-reference", action="store_true", help="skip the torch reference counts")
    p.add_argument("--keep-constant-init", action="store_true", help="do not perturb constant-initialised tensors (exports then contain Identity nodes from initializer deduplication)")
    p.add_argument("--summary", default=None, help="optional JSON file for the per-export summary (default: <out>/summary.json)")
    args = p.parse_args(argv)

    models = list(MODELS) if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for m in models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; known: {', '.join(MODELS)}")
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")

    out = Path(args.out)
    light_out = Path(args.light_out)
    out.mkdir(parents=True, exist_ok=True)
    light_out.mkdir(parents=True, exist_ok=True)
    ref_path = light_out / "reference.json"
    reference = json.loads(ref_path.read_text()) if ref_path.exists() else {}
    summary_path = Path(args.summary) if args.summary else out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = []
    for name in models:
        ref: dict = {}
        try:
            model, input_shape = build_model(name, perturb=not args.keep_constant_init)
        except Exception as e:  # noqa: BLE001
            err = f"{type(e).__name__}: {e}"
            reference[name] = {"error": f"build: {err}"}
            for v in variants:
                rows.append((name, v, False, 0.0, None, None, None, None, err))
            continue
        if not args.no_reference:
            try:
                ref = reference_counts(model, input_shape)
            except Exception as e:  # noqa: BLE001
                ref = {"input_shape": list(input_shape), "error": f"reference: {type(e).__name__}: {e}"}
            reference[name] = ref
            ref_path.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")
        else:
            ref = reference.get(name, {})
        for variant in variants:
            fname = f"{name}_{variant}.onnx"
            full_path = out / fname
            light_path = light_out / fname
            t0 = time.time()
            info: dict = {"model": name, "variant": variant}
            try:
                export(model, input_shape, variant, full_path)
                seconds = time.time() - t0
                m = onnx.load(str(full_path))
                onnx.checker.check_model(m)
                ops = Counter(n.op_type for n in m.graph.node)
                light = make_light(m)
                check_light(light)
                onnx.save(light, str(light_path))
                info.update(
                    ok=True,
                    seconds=round(seconds, 2),
                    full_mb=full_path.stat().st_size / 2**20,
                    light_kb=light_path.stat().st_size / 2**10,
                    nodes=len(m.graph.node),
                    initializers=len(m.graph.initializer),
                    ops=dict(sorted(ops.items())),
                    light_nodes=len(light.graph.node),
                    ir_version=m.ir_version,
                )
                if args.verify:
                    info["ort_rel_diff"] = verify_onnxruntime(model, input_shape, full_path)
                err = ""
                del m, light
            except Exception as e:  # noqa: BLE001
                seconds = time.time() - t0
                err = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                traceback.print_exc()
                info.update(ok=False, seconds=round(seconds, 2), error=err)
                if name in reference:
                    reference[name].setdefault("export_errors", {})[variant] = err
                    reference[name]["error"] = err
                    ref_path.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")
            summary[f"{name}_{variant}"] = info
            summary_path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
            rows.append(
                (
                    name,
                    variant,
                    info["ok"],
                    info["seconds"],
                    info.get("full_mb"),
                    info.get("light_kb"),
                    info.get("nodes"),
                    ref.get("flops"),
                    err,
                )
            )
            diff = f" ort_rel_diff={info['ort_rel_diff']:.2e}" if "ort_rel_diff" in info else ""
            print(f"[{name} {variant}] ok={info['ok']} {info['seconds']:.1f}s{diff} {err}", file=sys.stderr, flush=True)
        del model
        gc.collect()

    hdr = f"{'model':<20} {'variant':<7} {'ok':<3} {'sec':>6} {'full MB':>8} {'light KB':>9} {'ops':>5} {'flops':>14}  error"
    print(hdr)
    print("-" * len(hdr))

    for name, variant, ok, sec, mb, kb, nodes, flops, err in rows:
        print(
            f"{name:<20} {variant:<7} {'yes' if ok else 'NO':<3} {sec:>6.1f} "
            f"{(f'{mb:.1f}' if mb is not None else '-'):>8} {(f'{kb:.1f}' if kb is not None else '-'):>9} "
            f"{(str(nodes) if nodes is not None else '-'):>5} {(f'{flops:,}' if flops is not None else '-'):>14}  {err}"
        )
    light_total = sum(f.stat().st_size for f in light_out.glob("*.onnx"))
    print(f"\nlight files in {light_out}: {len(list(light_out.glob('*.onnx')))} files, {light_total / 2**20:.2f} MiB total")
    return 0 if all(r[2] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
