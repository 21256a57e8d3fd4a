import contextlib
import sys
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from builders import tiny_residual_net  # noqa: E402  (tests/ on the path first)
from morphnet_onnx import LatencySettings, latency_table  # noqa: E402

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
TORCHVISION_DIR = Path(__file__).parent / "data" / "torchvision"
REPO = Path(__file__).resolve().parent.parent
TABLE_WIDTH = 64  # the table_file fixture's model width


@pytest.fixture
def kill_training_at(monkeypatch):
    """`with kill_training_at(step):` Ctrl-C inside a training run at `step` (of the run labelled
    `label`, "shrink" or "fine-tune", when given), raised from the per-step callback as a user's
    interrupt arrives: after the checkpoints of the steps before it."""
    import morphnet_onnx.recipes.shrink as learning

    @contextlib.contextmanager
    def killed(step: int, label: str | None = None):
        def dying_progress(options, controller, run_label):
            def on_step(info):
                if info.step == step and label in (None, run_label):
                    raise KeyboardInterrupt
            return contextlib.nullcontext(), on_step, lambda text: None

        with monkeypatch.context() as m:
            m.setattr(learning, "_progress", dying_progress)
            yield

    return killed


@pytest.fixture
def light_dir() -> Path:
    return LIGHT_DIR


def light_models() -> list[Path]:
    return sorted(LIGHT_DIR.glob("light_*.onnx"))


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    """The tiny residual net (builders.py) at width 64 and one small latency table of it (3 random copies),
    for the tests that read one: (model path, table path, table). At width 16 (about 11 us a run) its
    floor copy measured 0.41-0.88x of the full model across tables minutes apart on a 2-core VM; at 64
    (about 49 us) 0.176-0.183x in six."""
    folder = tmp_path_factory.mktemp("table")
    model = folder / "tiny.onnx"
    onnx.save(tiny_residual_net(TABLE_WIDTH), str(model))
    table = latency_table(model, LatencySettings(threads=1), table_path=folder / "t.json", cache=False, copies=3)
    return model, folder / "t.json", table
