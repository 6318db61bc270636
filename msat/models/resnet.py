"""ResNets: ResNet20 for CIFAR (He et al. 2016) and torchvision's ResNet34 for ImageNet."""
from __future__ import annotations

import torch
import torch.hub
import torch.nn as nn

from .registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU; 1x1 conv+BN shortcut when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = act()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv3x3(16) -> 3 stages of ``n`` BasicBlocks (16/32/64 channels) -> global avg pool -> Linear."""

    def __init__(self, n: int = 3, num_classes: int = 10, width: int = 16, in_channels: int = 3,
                 act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = act()
        blocks: list[nn.Module] = []
        c = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(c, c_out, stride, act))
                c = c_out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x))         # (B, 64, 1, 1)
        return self.fc(torch.flatten(x, 1))


@register_model
def resnet20(num_classes: int = 10, act: type[nn.Module] = nn.ReLU, **kw) -> nn.Module:
    """ResNet20 for 32x32 inputs (~0.27 M parameters)."""
    return CifarResNet(n=3, num_classes=num_classes, act=act, **kw)


def _replace_relus(module: nn.Module, act: type[nn.Module]) -> None:
    """Swap every ``nn.ReLU`` submodule for a fresh ``act()`` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, act())
        else:
            _replace_relus(child, act)


@register_model
def resnet34(num_classes: int = 1000, pretrained: bool = False, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    """torchvision's ResNet34 (ImageNet layout). ``pretrained`` loads the IMAGENET1K_V1 weights
    (downloaded once into the torch hub cache); a classifier for ``num_classes != 1000`` is new."""
    from torchvision.models import ResNet34_Weights, resnet34 as tv_resnet34

    if pretrained:
        weights = ResNet34_Weights.IMAGENET1K_V1
        try:
            model = tv_resnet34(weights=weights)
        except Exception as e:  # no internet, proxy, corrupt cache, ...
            raise RuntimeError(
                f"resnet34(pretrained=True) could not get the torchvision weights from {weights.url} "
                f"({type(e).__name__}: {e}). Download that file on a machine with internet and place it in "
                f"{torch.hub.get_dir()}/checkpoints/, or set model.kwargs.pretrained=false.") from e
        if num_classes != model.fc.out_features:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model = tv_resnet34(weights=None, num_classes=num_classes)
    if act is not nn.ReLU:
        _replace_relus(model, act)
    return model
