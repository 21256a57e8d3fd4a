"""Stage 3 of the flow, analysis: which channels must be kept or removed together.

Owns the walk over the graph that asks ops/ each node's channel rule (walk.py), the union-find of
channel groups and the `Analysis` it returns (groups.py), the state one pass carries (context.py),
and which ops scale each group's channels and how alive they are (gates.py: norm scales or filter
rows). It may import the basis, ops/ and loading/ (the stage before); cost/, the next stage, prices
the groups it finds.
"""
