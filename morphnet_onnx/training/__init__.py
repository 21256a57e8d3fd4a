"""Stage 8 of the flow, training: take optimizer steps on a model with the method's regularizer.

Owns the loop shared by the backends (trainer.py: data order, schedule, controller, learning guard,
checkpoints and resume), the backend seam (backend.py) and its two engines (ort_backend.py with
graph.py, rewrites.py, ort.py and probe.py for onnxruntime-training; torch_backend.py for PyTorch,
data-parallel under torchrun with distributed.py), data sets (data.py), batch-norm statistics
(batchnorm.py), the learning guard (health.py) and `evaluate` (evaluation.py). It may import the basis
and every stage up to method/ (the stage before); recipes/, the next stage, composes it with the others.
"""
