"""Stage 7 of the flow, method: MorphNet itself, the math that decides the structure.

Owns the resource-weighted regularizers as ONNX subgraphs (regularizers.py: gamma and group lasso,
max or l2 grouping; figs.py: FiGS's stochastic gates), the strength controller and the per-channel
cost weights (controller.py), the decision from trained gates to the `Structure` that lands on
the budget (decision.py), landing on a measured latency budget (landing.py: decide, cut, measure,
correct) and the phases of a family of budgets in one run (family.py). It may import the basis and every stage up to expansion/ (the stage
before); training/, the next stage, trains a model with its regularizer.
"""
