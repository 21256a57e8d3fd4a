"""`python -m morphnet_onnx.cli ...`, the same as the `morphnet-onnx` script."""

import sys

from . import main

sys.exit(main())
