"""The models the experiments train.

All models take image batches ``[B, C, H, W]`` and return logits ``[B, classes]``.

- [`MnistCNN`][lamda.models.MnistCNN]: conv 1→32→64 (3×3), max-pool, dropout, fc 9216→128→10;
  1,199,882 parameters.
- [`SigmoidMLP`][lamda.models.SigmoidMLP]: 784-128-128-10 with sigmoid activations.
- [`CifarCNN`][lamda.models.CifarCNN]: plain CNN, 3 conv blocks 64→128→256 + 2 FC layers (``fc_width``).
- [`CifarResNet`][lamda.models.CifarResNet]: ResNet with batch norm, 3 stages of residual blocks
  (default 2 blocks each, 6 in all). The architecture study's sizes (≈ 1.8 M and ≈ 2.1 M
  parameters) are [`STUDY_SIZES`][lamda.models.STUDY_SIZES].
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["MnistCNN", "SigmoidMLP", "CifarCNN", "CifarResNet", "BasicBlock",
           "build_model", "MODEL_NAMES", "count_parameters", "STUDY_SIZES"]


class MnistCNN(nn.Module):
    """The classic Keras MNIST CNN. Input ``[B, 1, 28, 28]`` → logits ``[B, 10]``.

    ``dropout`` follows the pooled conv features, ``dropout_fc`` the 128-unit layer (Keras: 0.25, 0.5).
    """

    def __init__(self, dropout: float = 0.25, dropout_fc: float = 0.5, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.pool = nn.MaxPool2d(2)
        self.drop1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(9216, 128)
        self.drop2 = nn.Dropout(dropout_fc)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        """Logits ``[B, 10]`` of images ``[B, 1, 28, 28]``."""
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.drop1(self.pool(x))
        x = torch.flatten(x, 1)
        x = self.drop2(F.relu(self.fc1(x)))
        return self.fc2(x)


class SigmoidMLP(nn.Module):
    """784-128-128-10 MLP with sigmoid activations. Input ``[B, 1, 28, 28]`` or ``[B, 784]``."""

    def __init__(self, in_features: int = 784, hidden: tuple[int, ...] = (128, 128),
                 num_classes: int = 10, activation: str = "sigmoid", dropout: float = 0.0):
        super().__init__()
        acts = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), acts[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        """Logits ``[B, classes]`` of inputs ``[B, in_features]`` (or images, flattened)."""
        return self.net(x)


class CifarCNN(nn.Module):
    """Plain CNN for 32×32 RGB: 3 conv blocks and 2 fully connected layers.

    Conv blocks 64→128→256, each conv-ReLU-maxpool, then ``4·width·16 → fc_width → classes``. Defaults: 1,422,218
    parameters; ``fc_width=350`` gives the architecture study's ≈ 1.8 M (1,808,276).
    """

    def __init__(self, num_classes: int = 10, width: int = 64, dropout: float = 0.0, in_channels: int = 3,
                 fc_width: int = 256):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w * 16, fc_width), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(fc_width, num_classes),
        )

    def forward(self, x):
        """Logits ``[B, classes]`` of images ``[B, C, 32, 32]``."""
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        """The block's output ``relu(bn(conv(bn(conv(x)))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with batch norm: stem conv, 3 stages of [`BasicBlock`][lamda.models.BasicBlock], global pool, FC.

    Defaults (2, 2, 2) blocks of widths (16, 32, 64): 175,258 parameters; ``widths=(56, 112, 224)`` gives the
    architecture study's ≈ 2.1 M (2,127,618) with the same 6 residual blocks.
    """

    def __init__(self, num_classes: int = 10, blocks: tuple[int, int, int] = (2, 2, 2),
                 widths: tuple[int, int, int] = (16, 32, 64), in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        """Logits ``[B, classes]`` of images ``[B, C, H, W]``."""
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


# The architecture-vs-landscape study's model sizes (``build_model(name, **STUDY_SIZES[name])``):
# plain CNN ≈ 1.8 M and ResNet (6 residual blocks + batch norm) ≈ 2.1 M parameters.
STUDY_SIZES = {"cifar_cnn": {"fc_width": 350}, "cifar_resnet": {"widths": (56, 112, 224)}}

MODEL_NAMES = ("mnist_cnn", "sigmoid_mlp", "cifar_cnn", "cifar_resnet")


def build_model(name: str, *, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                **kwargs) -> nn.Module:
    """Build a model by name for inputs of ``in_channels`` × ``image_size``²."""
    if name == "mnist_cnn":
        if (in_channels, image_size) != (1, 28):
            raise ValueError("mnist_cnn needs 1×28×28 inputs (fc 9216 is fixed)")
        return MnistCNN(num_classes=num_classes, **kwargs)
    if name == "sigmoid_mlp":
        return SigmoidMLP(in_features=in_channels * image_size * image_size, num_classes=num_classes, **kwargs)
    if name == "cifar_cnn":
        if image_size != 32:
            raise ValueError("cifar_cnn needs 32×32 inputs")
        return CifarCNN(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if name == "cifar_resnet":
        return CifarResNet(num_classes=num_classes, in_channels=in_channels, **kwargs)
    raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")


def count_parameters(model: nn.Module) -> int:
    """Number of parameter entries (all of ``model.parameters()``)."""
    return sum(p.numel() for p in model.parameters())
