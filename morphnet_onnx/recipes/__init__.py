"""Stage 9 of the flow, recipes: the commands that compose every stage before them.

Owns `shrink` and `train` (shrink.py: prepare, cost, train with the regularizer, recalibrate,
decide, cut, fine-tune, write), a family of shrinks from one run (family.py: several budgets, one
model each) and `cycle` (cycle.py: rounds of shrink, expand, retrain and evaluate, resumable). It may import the basis and every stage up to training/ (the stage before); report/,
the next stage, prints and draws what they return.
"""
