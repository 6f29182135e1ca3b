"""Small models for the core tests: every construct the Taylor engine must run unmodified."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lamda.models import CifarResNet, MnistCNN, SigmoidMLP


class FunctionalNet(nn.Module):
    """A custom module whose forward calls torch.nn.functional and tensor methods directly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3)
        self.fc = nn.Linear(24, 16)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        h = F.elu(self.conv(x))
        h = F.leaky_relu(h, 0.1) * torch.tanh(h) + F.softplus(h, beta=2.0)
        h = h.view(h.size(0), -1)
        h = self.norm(F.gelu(self.fc(h)))
        h = F.silu(h) + torch.exp(-h * h) / (1 + h.pow(2)) + torch.log(torch.sigmoid(h) + 1)
        h = torch.cat([h[:, :8], h[:, 8:]], dim=1).mean(dim=1, keepdim=True) + h.permute(1, 0).transpose(0, 1)
        return self.out(F.dropout(h, 0.3, self.training))


def torchvision_resnet() -> nn.Module:
    """torchvision's ResNet with one ``BasicBlock`` per stage (resnet18 has two): every module type of resnet18
    (stem, max pooling, strided 1×1 downsampling, adaptive pooling) at 4.9 M parameters instead of 11.2 M."""
    return torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)


def build(name: str):
    """(model, x, y) in float64 for a named test case."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "sequential":
        m = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.Tanh(), nn.Dropout(0.2), nn.Linear(10, 4))
        x = torch.randn(3, 3, 4, generator=g)
    elif name == "functional":
        m, x = FunctionalNet(), torch.randn(3, 2, 8, generator=g)
    elif name == "mnist_cnn":
        m, x = MnistCNN(), torch.randn(2, 1, 28, 28, generator=g)
    elif name == "sigmoid_mlp":
        m, x = SigmoidMLP(), torch.randn(3, 1, 28, 28, generator=g)
    elif name == "cifar_resnet":
        m, x = CifarResNet(blocks=(1, 1, 1), widths=(2, 4, 4)), torch.randn(2, 3, 8, 8, generator=g)
    elif name == "tv_resnet":
        m, x = torchvision_resnet(), torch.randn(2, 3, 16, 16, generator=g)
    else:
        raise KeyError(name)
    m = m.double()
    with torch.no_grad():   # give batch norm non-trivial running statistics
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    x = x.double()
    classes = {"sequential": 4, "functional": 5}.get(name, 10)
    y = torch.randint(0, classes, (x.shape[0],), generator=g)
    return m, x, y
