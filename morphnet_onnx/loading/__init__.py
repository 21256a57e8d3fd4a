"""Stage 2 of the flow, loading: a model file in, a `LoadedModel` out, and files written back.

Owns reading models (external data left on disk and read mapped: external.py), the opset range and
upgrade, the checks a file must pass before anything else looks at it, static shapes by shape
inference with constant folding (folding.py, shapes.py), the one view of a model's constants
(view.py), constants an exporter shares between layers (aliases.py), placeholder weights made real
(placeholders.py), onnxruntime sessions on in-memory models (runtime.py) and atomic writing with the
user's umask (writing.py). It may import the basis (errors, graph_utils) and ops/ (the stage before:
what each op's parameters are); analysis/, the next stage, reads what it loads.
"""
