"""Stage 6 of the flow, expansion: one width multiplier for every group, to a budget.

Owns `expand` (expand.py: widths by bisection on the exact cost, surgery with repeated channel
indices for wider groups, the cost measured again on the written model) and weights for new or
retrained models (initialization.py: He or Glorot, norm parameters, the exact `keep` widening). It
may import the basis and every stage up to surgery/ (the stage before); method/, the next stage,
learns the structures it widens.
"""
