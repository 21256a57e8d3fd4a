"""`check` on real topologies: the onnx wheel's light CNNs and torchvision exports, both the
BN-kept and the BN-folded variants. Models dominated by huge classifier weights (VGG, AlexNet,
ZFNet) and ViT take 10-25 s each; they run in tools/zoo_check.py (docs/coverage.md), not here."""

import onnx
import pytest

from builders import Net
from conftest import LIGHT_DIR, TORCHVISION_DIR
from morphnet_onnx.surgery.checking import check

HEAVY = ("vgg", "alexnet", "zfnet", "wide_resnet", "vit_b_16")
LIGHT = [p for p in sorted(LIGHT_DIR.glob("light_*.onnx")) if not any(h in p.stem for h in HEAVY)]
TORCHVISION = [p for p in sorted(TORCHVISION_DIR.glob("*.onnx")) if not any(h in p.stem for h in HEAVY)]


# Every model at half its channels in CI; everything cut (whole branches removed) on the light zoo and
# a few cheap torchvision exports, the other models' `1.0` runs `slow` (tools/slow_tests.sh).
WHOLE_IN_CI = ("light_inception_v1", "light_densenet121", "light_resnet50", "light_squeezenet", "light_shufflenet",
               "resnet18_bn", "mobilenet_v2_bn", "efficientnet_b0_folded", "squeezenet1_1_bn")
CASES = [pytest.param(path, fraction, id=f"{path.stem}-{fraction}",
                      marks=() if fraction == 0.5 or path.stem.startswith(WHOLE_IN_CI) else pytest.mark.slow)
         for path in LIGHT + TORCHVISION for fraction in (0.5, 1.0)]


@pytest.mark.parametrize("path, fraction", CASES)
def test_check_passes(path, fraction):
    result = check(path, fraction=fraction, seed=1)
    assert result.passed, result
    assert result.flops_after < result.flops_before
    if "convnext" not in path.stem:
        assert result.prunable_flops_share > 0.9
    if fraction == 1.0 and "shufflenet" not in path.stem:
        assert result.groups_removed > 0  # whole branches go


def test_convnext_fails_safe_with_reasons():
    """LayerNorm over channels pins the residual stream; the MLP hidden layers still prune."""
    result = check(TORCHVISION_DIR / "convnext_tiny_folded.onnx", fraction=0.5)
    assert result.passed and 0.5 < result.prunable_flops_share < 1.0


def test_a_model_exported_in_training_mode_checks_what_its_outputs_compute():
    """torch's `net.train()` + `TrainingMode.PRESERVE`: every BatchNormalization has training_mode=1 and
    two more outputs (the updated running statistics) that nothing reads; they are not compared (their
    channels are not the group's channels in the analysis), the outputs and what they depend on are."""
    net = Net(input_shape=(1, 3, 8, 8), batch="N")
    x = net.relu(net.bn(net.conv("input", 3, 8, name="conv1"), 8, name="bn1"))
    x = net.relu(net.bn(net.conv(x, 8, 8, name="conv2"), 8, name="bn2"))
    model = net.model(net.conv(x, 8, 4, k=1, name="head"))
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            node.attribute.append(onnx.helper.make_attribute("training_mode", 1))
            node.output.extend([f"{node.name}.running_mean_out", f"{node.name}.running_var_out"])
    result = check(model, fraction=0.5, seed=1)
    assert result.passed and result.groups_pruned == 2, result
    assert "running" not in result.worst_tensor
