"""Stage 10 of the flow, report: what users read about models and results.

Owns `diff` (diff.py: what changed between two models, op by op, with matching.py pairing the ops
of the two graphs), the printed tables (tables.py) and the pictures and page (pictures.py: the
per-layer plot and the self-contained HTML), and a family's table and plot (family.py). It may import the basis and every stage (recipes/ is
the stage before); nothing in the package but the API and the CLI imports it.
"""
