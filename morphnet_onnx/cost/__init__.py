"""Stage 4 of the flow, cost: what a model and each channel of each group cost.

Owns the resources in MorphNet's conventions (FLOPs, parameters, roofline latency of a named
hardware: resources.py), the marginal cost of one channel, budgets relative to a model or absolute
(budget.py), measured latency (timing.py: timing and profiling a model in onnxruntime; latency.py:
the latency table and its cache; fitting.py: its fit; widths.py: each group's latency curve and the widths
worth having), and the `inspect` command (inspection.py: load, analyze, cost). It may import the basis,
ops/, loading/ and analysis/ (the stage before); surgery/, the next stage, measures what it cut with it.
"""
