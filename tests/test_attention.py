"""Transformers: attention heads (ops/attention.py), the embedding width through LayerNorm, RMSNorm
and token embeddings (ops/statistics.py, ops/embedding.py), computed reshape targets at a symbolic
batch (ops/base.py). Surgery is tested by equivalence: `check` zeroes the removed channels' gates
in the original, cuts them and compares every tensor both models compute in onnxruntime."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from builders import Net
from morphnet_onnx import analyze, inspect, load
from morphnet_onnx.loading.model import LoadedModel
from morphnet_onnx.loading.runtime import make_session
from morphnet_onnx.surgery.checking import check, zero_gates
from morphnet_onnx.surgery.pruning import cut_for_training, prepare, prune_loaded, verify_model
from morphnet_onnx.surgery.structure import Structure

TRANSFORMERS_DIR = Path(__file__).parent / "data" / "transformers"
EXPORTS = sorted(TRANSFORMERS_DIR.glob("*.onnx"))


def attention(net: Net, x: str, tokens: int, width: int, heads: int, kv_heads: int | None = None,
              name: str = "attn") -> str:
    """x [1, T, width] -> multi-head (or grouped-query) attention with an output projection."""
    kv_heads = kv_heads or heads
    d = width // heads
    q = net.matmul(x, width, heads * d, name=f"{name}.q")
    k = net.matmul(x, width, kv_heads * d, name=f"{name}.k")
    v = net.matmul(x, width, kv_heads * d, name=f"{name}.v")

    def split(t: str, h: int) -> str:
        shaped = net.op("Reshape", [t, net.const(np.array([1, tokens, h, d], np.int64))])
        return net.op("Transpose", [shaped], perm=[0, 2, 1, 3])

    def repeat(t: str) -> str:  # transformers' repeat_kv: [1, h, T, d] -> [1, h * rep, T, d]
        if kv_heads == heads:
            return t
        rep = heads // kv_heads
        wide = net.op("Expand", [net.op("Unsqueeze", [t, net.const(np.array([2], np.int64))]),
                                 net.const(np.array([1, kv_heads, rep, tokens, d], np.int64))])
        return net.op("Reshape", [wide, net.const(np.array([1, heads, tokens, d], np.int64))])

    qh, kh, vh = split(q, heads), repeat(split(k, kv_heads)), repeat(split(v, kv_heads))
    scores = net.op("MatMul", [net.op("Mul", [qh, net.const(np.float32(d ** -0.5))]),
                               net.op("Transpose", [kh], perm=[0, 1, 3, 2])])
    context = net.op("MatMul", [net.op("Softmax", [scores], axis=-1), vh])
    merged = net.op("Reshape", [net.op("Transpose", [context], perm=[0, 2, 1, 3]),
                                net.const(np.array([1, tokens, heads * d], np.int64))])
    return net.matmul(merged, heads * d, width, name=f"{name}.out")


def layer_norm(net: Net, x: str, width: int) -> str:
    gamma = net.const(net.rng.uniform(0.5, 1.5, width).astype(np.float32))
    beta = net.const(net.rng.normal(0, 0.1, width).astype(np.float32))
    return net.op("LayerNormalization", [x, gamma, beta], axis=-1)


def rms_norm(net: Net, x: str, width: int) -> str:
    """Llama's RMSNorm as exporters write it: x * 1 / sqrt(mean(x^2) + eps) * weight."""
    mean = net.op("ReduceMean", [net.op("Pow", [x, net.const(np.float32(2))])], axes=[-1], keepdims=1)
    inv = net.op("Reciprocal", [net.op("Sqrt", [net.op("Add", [mean, net.const(np.float32(1e-6))])])])
    weight = net.const(net.rng.uniform(0.5, 1.5, width).astype(np.float32))
    return net.op("Mul", [weight, net.op("Mul", [x, inv])])


def vit_block_model(heads: int = 4, kv_heads: int | None = None, tokens: int = 6, width: int = 16,
                    norm=layer_norm) -> onnx.ModelProto:
    """A pre-norm transformer block over a projected input, with a position embedding and a head."""
    net = Net(input_shape=(1, tokens, 8))
    x = net.matmul("input", 8, width, name="embed")
    x = net.op("Add", [x, net.const(net.rng.normal(0, 0.5, (1, tokens, width)).astype(np.float32))])
    x = net.op("Add", [x, attention(net, norm(net, x, width), tokens, width, heads, kv_heads)])
    hidden = net.op("Relu", [net.matmul(norm(net, x, width), width, 32, name="fc1")])
    x = net.op("Add", [x, net.matmul(hidden, 32, width, name="fc2")])
    return net.model(net.matmul(norm(net, x, width), width, 5, name="head"))


def groups_by_source(model):
    analysis = analyze(load(model))
    return analysis, {source: group for group in analysis.groups for source in group.sources}


def test_heads_are_channels_of_q_k_v_and_the_output_projection():
    analysis, g = groups_by_source(vit_block_model(heads=4))
    heads = g["attn.q"]
    assert heads is g["attn.k"] is g["attn.v"] and heads.prunable and heads.width == 4
    assert g["embed"] is g["attn.out"] is g["fc2"] and g["embed"].prunable  # the embedding width
    assert g["fc1"].prunable and g["fc1"].width == 32


def test_a_heads_cost_includes_both_attention_matmuls():
    report = inspect(vit_block_model(heads=4, tokens=6, width=16))
    heads = next(g for g in report.analysis.groups if "attn.q" in g.sources)
    marginal = report.costs.channel_marginal["flops"][heads.id]
    # One head (d = 4): q, k, v rows (3 x 2 x 6 tokens x 16 inputs x 4) + out columns (2 x 6 x 4 x 16)
    # + scores and context (2 x 2 x 6 x 6 x 4).
    assert marginal == pytest.approx([3 * 2 * 6 * 16 * 4 + 2 * 6 * 4 * 16 + 2 * 2 * 6 * 6 * 4] * 4)


def test_grouped_query_attention_keeps_a_kv_head_with_all_its_query_heads():
    analysis, g = groups_by_source(vit_block_model(heads=4, kv_heads=2))
    assert g["attn.q"] is g["attn.k"] is g["attn.v"] and g["attn.q"].width == 2


@pytest.mark.parametrize("kv_heads", [None, 2])
@pytest.mark.parametrize("fraction", [0.5, 1.0])
@pytest.mark.parametrize("norm", [layer_norm, rms_norm], ids=["layernorm", "rmsnorm"])
def test_attention_blocks_prune_exactly(kv_heads, fraction, norm):
    result = check(vit_block_model(heads=4, kv_heads=kv_heads, norm=norm), fraction=fraction, seed=3)
    assert result.passed and result.prunable_flops_share == 1.0, result
    assert result.flops_after < result.flops_before


def test_whole_heads_go_and_reshape_head_counts_are_rewritten():
    loaded, analysis = prepare(vit_block_model(heads=4))
    heads = next(g for g in analysis.groups if "attn.q" in g.sources)
    structure = Structure.full(analysis)
    structure.alive[heads.id][[1, 3]] = False
    pruned = prune_loaded(loaded, analysis, structure).model
    verify_model(pruned, "pruned")
    weights = {t.name: t for t in pruned.graph.initializer}
    q = next(n for n in pruned.graph.node if n.name == "attn.q")
    assert list(weights[q.input[1]].dims) == [16, 8]  # 2 heads of 4 dims: the head dimension is kept
    targets = [onnx.numpy_helper.to_array(weights[n.input[1]]).tolist() for n in pruned.graph.node
               if n.op_type == "Reshape" and n.input[1] in weights]
    assert [1, 6, 2, 4] in targets and [1, 6, 8] in targets


def test_layer_norm_over_removed_constant_channels_is_rewritten_exactly():
    """The position embedding leaves the removed embedding channels nonzero: the LayerNorm's mean and
    variance over the full width come back through the removed channels' sums."""
    loaded, analysis = prepare(vit_block_model(heads=2))
    stream = next(g for g in analysis.groups if "embed" in g.sources)
    structure = Structure.full(analysis)
    structure.alive[stream.id][[0, 5, 9]] = False
    result = check(vit_block_model(heads=2), fraction=0.3, seed=0)
    assert result.passed
    pruned = prune_loaded(loaded, analysis, structure).model
    assert not any(n.op_type == "LayerNormalization" for n in pruned.graph.node)  # written out
    assert any(n.op_type == "ReduceSum" for n in pruned.graph.node)


@pytest.mark.parametrize("norm", [layer_norm, rms_norm], ids=["layernorm", "rmsnorm"])
def test_where_training_follows_a_norm_stays_one_op_over_the_kept_channels(norm):
    """`shrink`'s cut (cut_for_training) keeps each LayerNormalization, and RMSNorm's ReduceMean, as
    one op computing over the kept channels alone: written out exactly it took 15 ops onnxruntime
    does not fuse (the tiny ViT export at half width ran slower than the full model)."""
    loaded, analysis = prepare(vit_block_model(heads=2, norm=norm))
    stream = next(g for g in analysis.groups if "embed" in g.sources)
    structure = Structure.full(analysis)
    kept = np.setdiff1d(np.arange(16), [0, 5, 9])
    structure.alive[stream.id][[0, 5, 9]] = False
    model = zero_gates(loaded.model, loaded, analysis, structure)  # as a regularized run leaves them
    for tensor in model.graph.initializer:  # and RMSNorm's weights (a Mul's constant)
        value = onnx.numpy_helper.to_array(tensor)
        if value.shape == (16,) and any(n.op_type == "Mul" and tensor.name in n.input for n in model.graph.node):
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.where(np.isin(np.arange(16), kept), value, 0.0)
                                                         .astype(np.float32), tensor.name))
    loaded = LoadedModel(model=model, path=None, shapes=loaded.shapes, dtypes=loaded.dtypes)
    exact = prune_loaded(loaded, analysis, structure).model
    cut = cut_for_training(loaded, analysis, structure).model
    verify_model(cut, "cut")
    ops = [n.op_type for n in cut.graph.node]
    originals = [n.op_type for n in model.graph.node]
    assert "ReduceSum" in [n.op_type for n in exact.graph.node] and "ReduceSum" not in ops
    for op_type in ("LayerNormalization", "ReduceMean"):
        assert ops.count(op_type) == originals.count(op_type)
    # Each norm computes over the kept channels of its input alone, with its scale (and shift) cut.
    norm_op = "LayerNormalization" if norm is layer_norm else "ReduceMean"
    first = next(n for n in cut.graph.node if n.op_type == norm_op)
    original_first = next(n for n in model.graph.node if n.op_type == norm_op)
    probe = onnx.ModelProto()
    probe.CopyFrom(cut)
    probe.graph.output.extend([helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                               for t in (first.input[0], first.output[0])])
    feed = np.random.default_rng(0).normal(size=(1, 6, 8)).astype(np.float32)
    x, y = make_session(probe).run([first.input[0], first.output[0]], {"input": feed})
    assert x.shape[-1] == len(kept)
    if norm is layer_norm:
        weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        gamma, beta = weights[original_first.input[1]][kept], weights[original_first.input[2]][kept]
        expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * gamma + beta
    else:  # the mean of the squares (its input) over the kept channels
        expected = x.mean(-1, keepdims=True)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_token_embedding_is_a_source_of_the_embedding_width():
    tokens, width, vocab = 5, 8, 11
    net = Net()
    table = net.const(net.rng.normal(0, 1, (vocab, width)).astype(np.float32), "wte")
    x = net.op("Gather", [table, "ids"], axis=0, name="embed")
    x = net.op("Add", [x, attention(net, rms_norm(net, x, width), tokens, width, 2)])
    out = net.op("MatMul", [rms_norm(net, x, width), net.op("Transpose", [table], perm=[1, 0])], name="lm_head")
    graph = helper.make_graph(net.nodes, "lm", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, tokens])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, tokens, vocab])], net.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    analysis, g = groups_by_source(model)
    assert g["embed"] is g["attn.out"] and g["embed"].prunable and g["embed"].width == width
    for fraction in (0.5, 1.0):
        result = check(model, fraction=fraction, seed=1)
        assert result.passed and result.groups_pruned >= 2, result


def test_reshape_targets_computed_from_shapes_follow_a_symbolic_batch():
    """x.view(B, T, H, E // H) with B and E read at run time: E is another tensor's width (pruned
    apart from the heads), B follows the batch. The rewritten target keeps B computed."""
    tokens, width, heads = 4, 8, 2
    net = Net(input_shape=(1, tokens, width), batch="N")
    x = net.matmul("input", width, width, name="embed")
    shape = net.op("Shape", [x])
    batch = net.op("Gather", [shape, net.const(np.array([0], np.int64))], axis=0)
    embed_width = net.op("Gather", [shape, net.const(np.array([2], np.int64))], axis=0)
    head_dim = net.op("Div", [embed_width, net.const(np.array([heads], np.int64))])
    target = net.op("Concat", [batch, net.const(np.array([tokens, heads], np.int64)), head_dim], axis=0)
    q = net.op("Transpose", [net.op("Reshape", [net.matmul(x, width, width, name="q"), target])], perm=[0, 2, 1, 3])
    k = net.op("Transpose", [net.op("Reshape", [net.matmul(x, width, width, name="k"), target])], perm=[0, 2, 3, 1])
    v = net.op("Transpose", [net.op("Reshape", [net.matmul(x, width, width, name="v"), target])], perm=[0, 2, 1, 3])
    context = net.op("MatMul", [net.op("Softmax", [net.op("MatMul", [q, k])], axis=-1), v])
    merged = net.op("Reshape", [net.op("Transpose", [context], perm=[0, 2, 1, 3]),
                                net.const(np.array([0, tokens, width], np.int64))])
    out = net.op("Add", [x, net.matmul(merged, width, width, name="out")])
    model = net.model(net.matmul(out, width, 3, name="head"))
    analysis, g = groups_by_source(model)
    assert g["q"].prunable and g["q"].width == heads and g["embed"].prunable
    result = check(model, fraction=0.5, seed=2)  # symbolic batch: compared at batch 2
    assert result.passed and result.groups_pruned == 2, result
    loaded, analysis = prepare(model)
    structure = Structure.full(analysis)
    for group in analysis.prunable_groups:
        structure.alive[group.id][0] = False
    pruned = prune_loaded(loaded, analysis, structure).model
    session = make_session(pruned)
    for batch in (1, 3):
        assert session.run(None, {"input": np.ones((batch, tokens, width), np.float32)})[0].shape == (batch, tokens, 3)


@pytest.mark.parametrize("path", EXPORTS, ids=[p.stem for p in EXPORTS])
def test_transformer_exports_are_fully_prunable_and_exact(path):
    """tools/export_transformers.py: BERT, GPT-2, ViT and Llama (RMSNorm, rotary, SwiGLU, GQA),
    both torch exporters."""
    for fraction in (0.5, 1.0):
        result = check(path, fraction=fraction, seed=0)
        assert result.passed and result.prunable_flops_share == 1.0, result
        assert result.flops_after < 0.6 * result.flops_before


@pytest.mark.parametrize("path", [p for p in EXPORTS if "llama" in p.stem], ids=lambda p: p.stem)
def test_llama_groups_heads_by_kv_head_and_ties_gate_and_up(path):
    analysis, g = groups_by_source(path)
    heads = [group for group in analysis.groups if any("q_proj" in s or s.endswith("linear") for s in group.sources)]
    widths = sorted({group.width for group in analysis.prunable_groups})
    assert widths == [2, 64, 128]  # 2 KV heads (each with its 2 query heads), the embedding width, SwiGLU
    swiglu = [group for group in analysis.prunable_groups if group.width == 128]
    assert all(len(group.sources) == 2 for group in swiglu)  # gate and up projections together
    assert heads is not None


def test_fused_attention_of_onnxruntimes_optimizer_is_kept_with_a_hint():
    """com.microsoft::MultiHeadAttention hides its heads in one node: what it reads stays, inspect says
    why and what to do, and the rest of the model still prunes exactly."""
    tokens, width = 4, 8
    net = Net(input_shape=(1, tokens, width))
    x = net.matmul("input", width, width, name="embed")
    q, k, v = (net.matmul(x, width, width, name=n) for n in ("q", "k", "v"))
    net.nodes.append(helper.make_node("MultiHeadAttention", [q, k, v], ["context"], name="mha", domain="com.microsoft",
                                      num_heads=2))
    hidden = net.op("Relu", [net.matmul("context", width, 16, name="fc1")])
    model = net.model(net.matmul(hidden, 16, 3, name="fc2"), output_shapes={"fc2_out": [1, tokens, 3]})
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.graph.value_info.append(helper.make_tensor_value_info("context", TensorProto.FLOAT, [1, tokens, width]))
    report = inspect(model)
    assert any("fused attention" in note and "before onnxruntime.transformers.optimizer" in note
               for note in report.analysis.notes)
    groups = {s: g for g in report.analysis.groups for s in g.sources}
    assert not groups["q"].prunable and groups["fc1"].prunable and groups["embed"].prunable
    result = check(model, fraction=0.5, seed=0)
    assert result.passed and result.groups_pruned == 2, result  # the MLP and what feeds q, k and v


@pytest.mark.parametrize("keepdims", [0, 1])
def test_a_mean_over_space_passes_removed_channels_untouched(keepdims):
    """torch's dynamo export writes global average pooling as ReduceMean over H, W: the channels pass
    through, the mean is not rewritten (only statistics over the channels are, ops/statistics.py)."""
    net = Net(input_shape=(1, 3, 8, 8))
    x = net.relu(net.bn(net.conv("input", 3, 8, name="c1"), 8))
    pooled = net.op("ReduceMean", [x, net.const(np.array([-1, -2], np.int64))], keepdims=keepdims)
    flat = net.op("Reshape", [pooled, net.const(np.array([1, 8], np.int64))])
    model = net.model(net.gemm(flat, 8, 3, name="fc"))
    model.opset_import[0].version = 18
    result = check(model, fraction=0.5, seed=0)
    assert result.passed and result.groups_pruned == 1, result
    loaded, analysis = prepare(model)
    structure = Structure.full(analysis)
    structure.alive[analysis.prunable_groups[0].id][:4] = False
    pruned = prune_loaded(loaded, analysis, structure).model
    assert [n.op_type for n in pruned.graph.node].count("ReduceMean") == 1


@pytest.mark.parametrize("heads", [1, 2])
def test_packed_qkv_as_timm_writes_it(heads):
    """qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0): H heads prune whole; a single
    head (expand's narrowest) is no head split: its dims prune, Q and K together."""
    tokens, width = 5, 8
    d = width // heads
    net = Net(input_shape=(1, tokens, width))
    x = net.matmul("input", width, width, name="embed")
    qkv = net.op("Reshape", [net.matmul(x, width, 3 * width, name="qkv"),
                             net.const(np.array([1, tokens, 3, heads, d], np.int64))])
    qkv = net.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])
    q, k, v = (net.op("Gather", [qkv, net.const(np.array(i, np.int64))], axis=0) for i in range(3))
    scores = net.op("MatMul", [q, net.op("Transpose", [k], perm=[0, 1, 3, 2])])
    context = net.op("MatMul", [net.op("Softmax", [scores], axis=-1), v])
    merged = net.op("Reshape", [net.op("Transpose", [context], perm=[0, 2, 1, 3]),
                                net.const(np.array([1, tokens, -1], np.int64))])
    out = net.op("Add", [x, net.matmul(merged, width, width, name="proj")])
    model = net.model(net.matmul(out, width, 3, name="head"))
    analysis, g = groups_by_source(model)
    assert g["qkv"].prunable and g["qkv"].width == (heads if heads > 1 else d)
    for fraction in (0.5, 1.0):
        result = check(model, fraction=fraction, seed=1)
        assert result.passed and result.prunable_flops_share == 1.0, result
