"""`python -m morphnet_onnx ...` (what torchrun launches: `torchrun ... -m morphnet_onnx shrink ...`)."""

import sys

from .cli import main

sys.exit(main())
