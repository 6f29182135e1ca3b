"""The ``--dataset`` of the studies that train on MNIST: MNIST from the data root, or the offline ``digits`` set."""
from __future__ import annotations

import warnings

from ..data import load_dataset

__all__ = ["MNIST_LIKE", "add_mnist_like_argument", "load_mnist_like"]

MNIST_LIKE = ("auto", "mnist", "digits")


def add_mnist_like_argument(p) -> None:
    """The ``--dataset`` option of the studies that read their data through `load_mnist_like`."""
    p.add_argument("--dataset", choices=MNIST_LIKE, default="auto",
                   help="auto (default): MNIST when found under the data root, else the offline digits set")


def load_mnist_like(dataset: str, root, *, train_size: int | None, test_size: int | None, seed: int,
                    label_noise: float = 0.0, download: bool = False):
    """``dataset`` = ``"mnist"``, ``"digits"`` or ``"auto"`` (MNIST when found under ``root``, else digits).

    Returns ``(data, name, note)``; ``note`` says why digits were used ("" otherwise). Subset sizes larger
    than the digits set are clipped for digits (it has 1200 train / 597 test images).

    Raises:
        ValueError: an unknown ``dataset``.
        FileNotFoundError: ``dataset="mnist"`` and MNIST is not under ``root``.
    """
    if dataset not in MNIST_LIKE:
        raise ValueError(f"dataset must be auto, mnist or digits, got {dataset!r}")
    if dataset in ("auto", "mnist"):
        try:
            data = load_dataset("mnist", root=root, train_size=train_size, test_size=test_size, seed=seed,
                                label_noise=label_noise, download=download)
            return data, "mnist", ""
        except FileNotFoundError as exc:
            if dataset == "mnist":
                raise
            note = f"MNIST not found ({str(exc).splitlines()[0]}); used the offline digits set instead"
            warnings.warn(note)
    else:
        note = "the offline digits set was asked for"
    tr = None if train_size is None else min(train_size, 1200)
    te = None if test_size is None else min(test_size, 597)
    data = load_dataset("digits", train_size=tr, test_size=te, seed=seed, label_noise=label_noise)
    return data, "digits", note
