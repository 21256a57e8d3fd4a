"""Stage 5 of the flow, surgery: a `Structure` in, a smaller ONNX model that computes the same out.

Owns the `Structure` and its JSON file (structure.py), the pass that cuts every op through the
cutters of ops/ (apply.py, with the graph under construction in rewrite.py and what removed
channels hold in values.py), which structures can be applied (feasibility.py: branches that vanish,
repairs, the smallest structure), and the commands made of these: `prune` (pruning.py, with
`prepare` and `verify_model`, which later stages share), `check` (checking.py) and the measuring
of the latency table (latency.py: the model cut to many widths, timed and profiled). It may import
the basis, ops/, loading/, analysis/ and cost/ (the stage before); expansion/, the next stage,
widens with the same cutters.
"""
