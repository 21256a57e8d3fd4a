#!/usr/bin/env python3
"""Export small transformers the way users export them (DEV-ONLY: needs torch, transformers and, for
the dynamo exporter, onnxscript).

Four models built from `transformers` configs with random weights (no hub download), each a few
hundred KB, the architectures users bring most:

- `bert`:  BertForSequenceClassification (post-LayerNorm, absolute position embeddings, token
  types, GELU MLP, a pooler), inputs `input_ids` and `attention_mask`;
- `gpt2`:  GPT2LMHeadModel (pre-LayerNorm, Conv1D projections with a packed QKV, causal mask, the
  output head tied to the token embedding);
- `vit`:   ViTForImageClassification (patch embedding conv, class token, position embeddings);
- `llama`: LlamaForCausalLM (RMSNorm, rotary embedding, SwiGLU MLP, grouped-query attention with
  2 KV heads for 4 query heads, untied head).

Each is exported with both of torch's exporters, at the opset each uses by default:
`<name>_dynamo.onnx` (`torch.onnx.export(..., dynamo=True)`, the default since torch 2.9) and
`<name>_torchscript.onnx` (`dynamo=False`). Static shapes (batch 1, 16 tokens; 32x32 images), the
weights inside the file.

    .venv/bin/python tools/export_transformers.py --out tests/data/transformers
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

TOKENS = 16
VOCAB = 128
HIDDEN = 64
HEADS = 4
LAYERS = 2
MLP = 128


def _hide_broken_torchvision() -> None:
    """transformers imports torchvision when it is installed; a torchvision built for another torch
    fails at import (`operator torchvision::nms does not exist`). None of these models needs it."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        sys.modules.pop("torchvision", None)
        import transformers.utils as utils
        import transformers.utils.import_utils as import_utils
        for module in (utils, import_utils):
            module.is_torchvision_available = lambda: False
            module.is_torchvision_v2_available = lambda: False


def build(name: str, seed: int = 0, attention: str | None = None):
    """(model in eval mode, example inputs as a tuple, input names). `attention`: transformers'
    attn_implementation ("sdpa" by default, "eager")."""
    _hide_broken_torchvision()
    import transformers as tf

    torch.manual_seed(seed)
    ids = torch.randint(0, VOCAB, (1, TOKENS))
    if name == "bert":
        config = tf.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                               num_attention_heads=HEADS, intermediate_size=MLP, max_position_embeddings=32,
                               num_labels=3)
        model = tf.BertForSequenceClassification(config)
        return model.eval(), (ids, torch.ones(1, TOKENS, dtype=torch.int64)), ["input_ids", "attention_mask"]
    if name == "gpt2":
        config = tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=32,
                               n_inner=MLP)
        return tf.GPT2LMHeadModel(config).eval(), (ids,), ["input_ids"]
    if name == "vit":
        config = tf.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=HIDDEN,
                              num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=MLP,
                              num_labels=10)
        return tf.ViTForImageClassification(config).eval(), (torch.randn(1, 3, 32, 32),), ["pixel_values"]
    if name == "llama":
        config = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP,
                                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
                                max_position_embeddings=64, tie_word_embeddings=False)
        if attention:
            config._attn_implementation = attention
        return tf.LlamaForCausalLM(config).eval(), (ids,), ["input_ids"]
    raise SystemExit(f"unknown model {name!r}")


class Logits(torch.nn.Module):
    """The model returning its logits only (what users export for inference)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return self.model(*inputs, use_cache=False).logits if "use_cache" in self.model.forward.__code__.co_varnames \
            else self.model(*inputs).logits


def export(name: str, out_dir: Path, dynamo: bool) -> Path:
    # The TorchScript exporter cannot convert SDPA with grouped-query attention ("not implemented if
    # enable_gqa is True"): users of GQA models switch to the eager attention, as here.
    model, inputs, names = build(name, attention=None if dynamo or name != "llama" else "eager")
    path = out_dir / f"{name}_{'dynamo' if dynamo else 'torchscript'}.onnx"
    wrapped = Logits(model).eval()
    with torch.no_grad():
        if dynamo:
            program = torch.onnx.export(wrapped, inputs, input_names=names, output_names=["logits"], dynamo=True,
                                        optimize=True)
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(wrapped, inputs, str(path), input_names=names, output_names=["logits"], dynamo=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("tests/data/transformers"))
    parser.add_argument("--models", nargs="*", default=["bert", "gpt2", "vit", "llama"])
    parser.add_argument("--exporters", nargs="*", default=["dynamo", "torchscript"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        for exporter in args.exporters:
            path = export(name, args.out, exporter == "dynamo")
            print(f"{path} {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
