"""The README's export snippet, runnable: builds torchvision's ResNet-18 with the CIFAR stem at
ssl-engine's `model_opts.width` and writes its state-dict keys and shapes for the demo recipe's
width (16) to state_dict_keys_demo.json, which tests/train_loop.rs checks the demo recipe's
export against. With a file argument it also loads an exported backbone, as the README does:

    python tests/reference/export_snippet.py [backbone.safetensors]
"""
import json
import os
import sys

import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock


# --- the README's code, verbatim --------------------------------------------------------------
def resnet18_cifar(width=64):
    """torchvision's ResNet-18 with the CIFAR stem and ssl-engine's model_opts.width."""
    m = torchvision.models.resnet18()
    m.inplanes = width
    m.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False); m.bn1 = nn.BatchNorm2d(width); m.maxpool = nn.Identity()
    m.layer1 = m._make_layer(BasicBlock, width, 2)
    m.layer2 = m._make_layer(BasicBlock, 2 * width, 2, stride=2)
    m.layer3 = m._make_layer(BasicBlock, 4 * width, 2, stride=2)
    m.layer4 = m._make_layer(BasicBlock, 8 * width, 2, stride=2)
    m.fc = nn.Identity()
    return m

# ----------------------------------------------------------------------------------------------


if __name__ == "__main__":
    m = resnet18_cifar(width=16)
    keys = {k: list(v.shape) for k, v in m.state_dict().items()}
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "state_dict_keys_demo.json")
    with open(out, "w") as f:
        json.dump({"resnet18-cifar-width16": keys}, f, indent=0, sort_keys=True)
    print(f"wrote {out} ({len(keys)} tensors)")
    if len(sys.argv) > 1:
        import safetensors.torch
        import torch
        result = m.load_state_dict(safetensors.torch.load_file(sys.argv[1]))
        print(f"loaded {sys.argv[1]}: {result}")
        m.eval()
        print("features of a zero image:", tuple(m(torch.zeros(1, 3, 32, 32)).shape))
