"""Data sets as in-memory tensors: MNIST, CIFAR-10 and the offline ``digits`` default.

Subsets are loaded whole into tensors (``x [N, C, H, W]`` float32, normalised; ``y [N]`` int64),
which on a CPU is much faster than a per-item DataLoader for the small subsets the experiments use.

- ``mnist``: ``torchvision.datasets.MNIST(root, download=...)``; 1×28×28.
- ``cifar10``: ``torchvision.datasets.CIFAR10`` (``root/cifar-10-batches-py``) or an ImageFolder tree
  ``root/CIFAR10-jpeg/{train,test}/<class>/*.jpg``; 3×32×32.
- ``digits``: scikit-learn's handwritten digits (1797 8×8 images, shipped with scikit-learn),
  upsampled to 20×20 and padded to 1×28×28 like MNIST, so the MNIST models run on it.  No files needed.

The data root comes from the ``root`` argument, then ``$LAMDA_DATA_ROOT``, then ``./data``.
Batch augmentation ([`Augmenter`][lamda.data.Augmenter]) runs on tensors with per-sample random affine maps.
"""
from __future__ import annotations

import math
import os
import pathlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DATASETS", "TensorDataset", "resolve_data_root", "load_dataset", "add_label_noise",
           "seeded_subset", "Augmenter", "batches", "DATASET_INFO"]

DATASETS = ("mnist", "cifar10", "digits")

# (channels, size, classes, mean, std)
DATASET_INFO = {
    "mnist": (1, 28, 10, (0.1307,), (0.3081,)),
    "digits": (1, 28, 10, (0.1307,), (0.3081,)),
    "cifar10": (3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass
class TensorDataset:
    """A train/test split held in memory.

    ``x_train [N, C, H, W]``, ``y_train [N]`` (possibly noisy), ``y_train_clean [N]``, ``x_test [M, C, H, W]``,
    ``y_test [M]``; ``train_indices``/``test_indices`` index the source data set.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    y_train_clean: torch.Tensor | None = None
    train_indices: np.ndarray | None = None
    test_indices: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        """C, the image channels."""
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        """The image side length (H = W)."""
        return int(self.x_train.shape[-1])

    def to(self, device) -> "TensorDataset":
        """Move every tensor to ``device`` (in place); returns ``self``."""
        for k in ("x_train", "y_train", "x_test", "y_test", "y_train_clean"):
            v = getattr(self, k)
            if v is not None:
                setattr(self, k, v.to(device))
        return self


def resolve_data_root(root: str | os.PathLike | None = None) -> pathlib.Path:
    """``root`` if given, else ``$LAMDA_DATA_ROOT``, else ``./data``."""
    if root is not None and str(root) != "":
        return pathlib.Path(root).expanduser()
    env = os.environ.get("LAMDA_DATA_ROOT")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path("data")


def seeded_subset(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """``n`` distinct indices of ``range(n_total)`` drawn with a seeded generator (sorted); all when n is None."""
    if n is None or n >= n_total:
        if n is not None and n > n_total:
            raise ValueError(f"asked for {n} samples but the data set has only {n_total}")
        return np.arange(n_total)
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    return np.sort(torch.randperm(n_total, generator=g)[:n].numpy())


def add_label_noise(y: torch.Tensor, fraction: float, num_classes: int, seed: int) -> torch.Tensor:
    """Replace a seeded ``fraction`` of labels by a different class drawn uniformly. ``y [N]`` → ``[N]``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label noise fraction must be in [0, 1], got {fraction}")
    y = y.clone()
    if fraction == 0.0:
        return y
    g = torch.Generator().manual_seed(int(seed))
    n = y.shape[0]
    k = int(round(fraction * n))
    idx = torch.randperm(n, generator=g)[:k]
    shift = torch.randint(1, num_classes, (k,), generator=g)
    y[idx] = (y[idx].cpu() + shift).remainder(num_classes).to(y.dtype).to(y.device)
    return y


def _normalise(x: torch.Tensor, name: str) -> torch.Tensor:
    _, _, _, mean, std = DATASET_INFO[name]
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def _load_digits(train_size, test_size, seed):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0          # [1797, 1, 8, 8] in [0, 1]
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)     # MNIST digits fill 20×20
    x = F.pad(x, (4, 4, 4, 4)).clamp_(0.0, 1.0)                                   # centred in 28×28
    y = torch.tensor(d.target, dtype=torch.long)
    n = x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1234)).numpy()   # fixed train/test split
    n_test_pool = 597
    test_pool, train_pool = perm[:n_test_pool], perm[n_test_pool:]
    tr = train_pool[seeded_subset(len(train_pool), train_size, seed)]
    te = test_pool[seeded_subset(len(test_pool), test_size, seed + 1)]
    return x[tr], y[tr], x[te], y[te], tr, te


_MNIST_FILES = {  # raw file -> (idx magic number, trailing dims per item)
    "train-images-idx3-ubyte": (2051, (28, 28)), "train-labels-idx1-ubyte": (2049, ()),
    "t10k-images-idx3-ubyte": (2051, (28, 28)), "t10k-labels-idx1-ubyte": (2049, ()),
}


def _read_idx_header(path: pathlib.Path, magic: int, dims: tuple) -> int:
    """Item count of an uncompressed MNIST idx file, after checking its header and size.

    Checks the magic number, shape and size (the size must be exactly header + items); ``ValueError`` naming the file
    otherwise.
    """
    nd = 1 + len(dims)
    with open(path, "rb") as f:
        head = f.read(4 * (nd + 1))
    if len(head) < 4 * (nd + 1):
        raise ValueError(f"{path}: corrupt MNIST file: {len(head)} bytes, shorter than its header; "
                         "re-download or restore the file")
    got = int.from_bytes(head[:4], "big")
    if got != magic:
        raise ValueError(f"{path}: not an MNIST {'image' if dims else 'label'} file (bad magic number {got:#010x}, "
                         f"expected {magic:#010x}); re-download or restore the file")
    shape = [int.from_bytes(head[4 * (i + 1):4 * (i + 2)], "big") for i in range(nd)]
    if tuple(shape[1:]) != tuple(dims):
        raise ValueError(f"{path}: corrupt MNIST file: items of shape {shape[1:]}, expected {list(dims)}")
    want = 4 * (nd + 1) + math.prod(shape)
    size = path.stat().st_size
    if size != want:
        raise ValueError(f"{path}: {'truncated' if size < want else 'corrupt'} MNIST file: {size} bytes, its header "
                         f"({' x '.join(map(str, shape))}) needs {want}; re-download or restore the file")
    return shape[0]


def check_mnist_files(raw: pathlib.Path) -> None:
    """Validate the four uncompressed MNIST files in ``raw`` (torchvision's ``root/MNIST/raw``).

    Present, magic numbers, sizes, image/label counts, label bytes in 0..9. Raises ``FileNotFoundError``/``ValueError``
    naming the file.
    """
    missing = [n for n in _MNIST_FILES if not (raw / n).is_file()]
    if missing:
        raise FileNotFoundError(f"MNIST is incomplete under {raw}: missing {', '.join(missing)}; restore them or "
                                "pass --download when online")
    counts = {n: _read_idx_header(raw / n, *spec) for n, spec in _MNIST_FILES.items()}
    for split in ("train", "t10k"):
        ni, nl = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
        if ni != nl:
            raise ValueError(f"{raw / f'{split}-labels-idx1-ubyte'}: {nl} labels for {ni} images in "
                             f"{split}-images-idx3-ubyte; re-download or restore the files")
        labels = np.fromfile(raw / f"{split}-labels-idx1-ubyte", dtype=np.uint8, offset=8)
        bad = np.flatnonzero(labels > 9)
        if bad.size:
            raise ValueError(f"{raw / f'{split}-labels-idx1-ubyte'}: label byte {int(labels[bad[0]])} at item "
                             f"{int(bad[0])} is not a digit 0..9 ({bad.size} such labels); the file is corrupt")


def _load_mnist(root, train_size, test_size, seed, download):
    from torchvision.datasets import MNIST
    raw = pathlib.Path(root) / "MNIST" / "raw"
    present = [n for n in _MNIST_FILES if (raw / n).is_file()]
    if not present and not download:
        raise FileNotFoundError(
            f"MNIST not found under {root} (expected {root}/MNIST/raw/*-ubyte). Pass --data-root, set "
            f"LAMDA_DATA_ROOT, or add --download when online; `--dataset digits` needs no files.")
    if len(present) == len(_MNIST_FILES) or not download:
        check_mnist_files(raw)      # damaged files are named here, never reported as "not found"
    try:
        tr_ds = MNIST(str(root), train=True, download=download)
        te_ds = MNIST(str(root), train=False, download=download)
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"MNIST not found under {root} (expected {root}/MNIST/raw/*-ubyte). Pass --data-root, set "
            f"LAMDA_DATA_ROOT, or add --download when online; `--dataset digits` needs no files.") from exc
    if download:
        check_mnist_files(raw)
    tr = seeded_subset(len(tr_ds), train_size, seed)
    te = seeded_subset(len(te_ds), test_size, seed + 1)
    x_tr = tr_ds.data[torch.as_tensor(tr)].unsqueeze(1).float() / 255.0
    x_te = te_ds.data[torch.as_tensor(te)].unsqueeze(1).float() / 255.0
    return x_tr, tr_ds.targets[torch.as_tensor(tr)].long(), x_te, te_ds.targets[torch.as_tensor(te)].long(), tr, te


def _cifar_imagefolder_root(root: pathlib.Path) -> pathlib.Path | None:
    for cand in (root / "CIFAR10-jpeg", root):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    return None


def _load_cifar10(root, train_size, test_size, seed, download):
    root = pathlib.Path(root)
    if (root / "cifar-10-batches-py").is_dir() or download:
        from torchvision.datasets import CIFAR10
        tr_ds = CIFAR10(str(root), train=True, download=download)
        te_ds = CIFAR10(str(root), train=False, download=download)
        tr = seeded_subset(len(tr_ds), train_size, seed)
        te = seeded_subset(len(te_ds), test_size, seed + 1)
        conv = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0
        return (conv(tr_ds.data[tr]), torch.tensor(tr_ds.targets)[torch.as_tensor(tr)].long(),
                conv(te_ds.data[te]), torch.tensor(te_ds.targets)[torch.as_tensor(te)].long(), tr, te)
    folder = _cifar_imagefolder_root(root)
    if folder is None:
        raise FileNotFoundError(
            f"CIFAR-10 not found under {root}: expected {root}/cifar-10-batches-py (torchvision form) or "
            f"{root}/CIFAR10-jpeg/{{train,test}}/<class>/*.jpg (ImageFolder form). Pass --data-root or --download.")
    from PIL import Image
    from torchvision.datasets import ImageFolder

    def load(split, n, s):
        ds = ImageFolder(str(folder / split))
        idx = seeded_subset(len(ds.samples), n, s)
        xs = torch.empty(len(idx), 3, 32, 32, dtype=torch.uint8)
        ys = torch.empty(len(idx), dtype=torch.long)
        for j, i in enumerate(idx):
            p, t = ds.samples[i]
            with Image.open(p) as im:
                img = torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
            if img.shape[-2:] != (32, 32):
                raise ValueError(f"{p}: expected a 32×32 CIFAR-10 image, got {tuple(img.shape[-2:])}")
            xs[j], ys[j] = img, t
        return xs.float() / 255.0, ys, idx

    x_tr, y_tr, tr = load("train", train_size, seed)
    x_te, y_te, te = load("test", test_size, seed + 1)
    return x_tr, y_tr, x_te, y_te, tr, te


def load_dataset(name: str, *, root: str | os.PathLike | None = None, train_size: int | None = None,
                 test_size: int | None = None, seed: int = 42, label_noise: float = 0.0,
                 download: bool = False) -> TensorDataset:
    """Load a seeded subset of a data set into normalised tensors.

    Args:
        name: ``"mnist"``, ``"cifar10"`` or ``"digits"`` (offline, ships with scikit-learn).
        root: data folder (else ``$LAMDA_DATA_ROOT``, else ``./data``); ignored for ``digits``.
        train_size: training subset size (None = all), drawn with ``seed``.
        test_size: test subset size (None = all), drawn with ``seed + 1``.
        seed: seeds the subsets and the label noise.
        label_noise: fraction of training labels replaced by a wrong class (seeded with ``seed + 2``).
        download: let torchvision download MNIST/CIFAR-10 when missing (needs internet).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {DATASETS}")
    for label, n in (("train_size", train_size), ("test_size", test_size)):
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"{label} must be a positive int or None, got {n!r}")
    r = resolve_data_root(root)
    if name == "digits":
        parts = _load_digits(train_size, test_size, seed)
    elif name == "mnist":
        parts = _load_mnist(r, train_size, test_size, seed, download)
    else:
        parts = _load_cifar10(r, train_size, test_size, seed, download)
    x_tr, y_tr, x_te, y_te, tr, te = parts
    num_classes = DATASET_INFO[name][2]
    y_noisy = add_label_noise(y_tr, label_noise, num_classes, seed + 2)
    return TensorDataset(name=name, x_train=_normalise(x_tr, name).contiguous(), y_train=y_noisy,
                         x_test=_normalise(x_te, name).contiguous(), y_test=y_te, num_classes=num_classes,
                         y_train_clean=y_tr, train_indices=np.asarray(tr), test_indices=np.asarray(te),
                         info={"root": None if name == "digits" else str(r), "label_noise": label_noise,
                               "seed": seed})


class Augmenter:
    """Per-sample random affine augmentation of a batch ``[B, C, H, W]`` → ``[B, C, H, W]``.

    ``rotation``: max degrees (uniform in ±rotation); ``translate``: max shift in pixels (integer
    shifts, uniform); ``hflip``: flip half the images horizontally.  ``for_dataset("mnist")`` = rotation 10° +
    translation 2 px; ``for_dataset("cifar10")`` = crop with 4-pixel padding (= integer translation) + flip,
    plus ``rotation`` degrees when asked.  ``fill``: the value (per channel) outside the image.
    """

    def __init__(self, rotation: float = 0.0, translate: int = 0, hflip: bool = False,
                 fill: tuple[float, ...] | float = 0.0):
        if rotation < 0 or translate < 0:
            raise ValueError("rotation and translate must be >= 0")
        self.rotation, self.translate, self.hflip = float(rotation), int(translate), bool(hflip)
        self.fill = tuple(fill) if isinstance(fill, (tuple, list)) else (float(fill),)

    @classmethod
    def for_dataset(cls, name: str, rotation: float | None = None) -> "Augmenter":
        """The study's augmentation for ``name`` (``"mnist"``, ``"digits"`` or ``"cifar10"``; class docstring)."""
        if name not in DATASET_INFO:
            raise ValueError(f"no augmentation defined for {name!r}")
        _, _, _, mean, std = DATASET_INFO[name]
        fill = tuple(-m / s for m, s in zip(mean, std))      # a black pixel after normalisation
        if name in ("mnist", "digits"):
            return cls(rotation=10.0 if rotation is None else rotation, translate=2, fill=fill)
        if name == "cifar10":
            return cls(rotation=0.0 if rotation is None else rotation, translate=4, hflip=True, fill=fill)
        raise ValueError(f"no augmentation defined for {name!r}")

    def describe(self) -> dict:
        """The settings, for ``config.json``."""
        return {"rotation": self.rotation, "translate": self.translate, "hflip": self.hflip}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``x`` ``[B, C, H, W]`` → ``[B, C, H, W]`` (same dtype and device), drawing from ``generator``."""
        if x.dim() != 4:
            raise ValueError(f"Augmenter expects [B, C, H, W], got {list(x.shape)}")
        B, _, H, W = x.shape
        dev = x.device
        ang = (torch.rand(B, generator=generator) * 2 - 1) * math.radians(self.rotation)
        tx = torch.randint(-self.translate, self.translate + 1, (B,), generator=generator).float()
        ty = torch.randint(-self.translate, self.translate + 1, (B,), generator=generator).float()
        flip = (torch.rand(B, generator=generator) < 0.5) if self.hflip else torch.zeros(B, dtype=torch.bool)
        cos, sin = torch.cos(ang), torch.sin(ang)
        sx = torch.where(flip, -1.0, 1.0)
        theta = torch.zeros(B, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin * sx, cos
        theta[:, 0, 2] = -2.0 * tx / W       # output pixel (i, j) reads input (i - ty, j - tx)
        theta[:, 1, 2] = -2.0 * ty / H
        grid = F.affine_grid(theta.to(dev, x.dtype), list(x.shape), align_corners=False)
        mode = "nearest" if self.rotation == 0.0 else "bilinear"
        bg = torch.tensor(self.fill, dtype=x.dtype, device=dev).view(1, -1, 1, 1)
        return F.grid_sample(x - bg, grid, mode=mode, padding_mode="zeros", align_corners=False) + bg


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True):
    """Yield index tensors covering ``range(n)`` in batches (shuffled with ``generator``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]
