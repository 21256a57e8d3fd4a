import sys
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
TORCHVISION_DIR = Path(__file__).parent / "data" / "torchvision"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def light_dir() -> Path:
    return LIGHT_DIR


def light_models() -> list[Path]:
    return sorted(LIGHT_DIR.glob("light_*.onnx"))
