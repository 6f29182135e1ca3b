"""Data loading, subsets, label noise and augmentation (lamda.data)."""
import pathlib

import numpy as np
import pytest
import torch

from lamda.data import (Augmenter, DATASET_INFO, add_label_noise, batches, load_dataset, resolve_data_root,
                        seeded_subset)


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LAMDA_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("LAMDA_DATA_ROOT")
    assert resolve_data_root(None) == pathlib.Path("data")


def test_seeded_subset():
    a, b = seeded_subset(1000, 100, 3), seeded_subset(1000, 100, 3)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 100 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert not np.array_equal(a, seeded_subset(1000, 100, 4))
    np.testing.assert_array_equal(seeded_subset(10, None, 0), np.arange(10))
    with pytest.raises(ValueError, match="only 10"):
        seeded_subset(10, 11, 0)


def test_label_noise_exact_fraction_and_always_wrong():
    y = torch.arange(1000) % 10
    z = add_label_noise(y, 0.2, 10, seed=5)
    changed = z != y
    assert int(changed.sum()) == 200
    assert z.min() >= 0 and z.max() <= 9
    torch.testing.assert_close(z, add_label_noise(y, 0.2, 10, seed=5))
    assert not torch.equal(z, add_label_noise(y, 0.2, 10, seed=6))
    torch.testing.assert_close(add_label_noise(y, 0.0, 10, 1), y)
    with pytest.raises(ValueError):
        add_label_noise(y, 1.5, 10, 0)


def test_digits_offline_default():
    from sklearn.datasets import load_digits
    d = load_dataset("digits", train_size=300, test_size=100, seed=1)
    assert d.x_train.shape == (300, 1, 28, 28) and d.x_test.shape == (100, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert set(d.y_train.tolist()) <= set(range(10)) and d.num_classes == 10
    assert not set(d.train_indices.tolist()) & set(d.test_indices.tolist())
    # reference: the 8×8 image, upsampled → the centre 20×20 block averages back to the original intensities
    ref = load_digits().images[d.train_indices[0]] / 16.0
    _, _, _, mean, std = DATASET_INFO["digits"]
    x = d.x_train[0, 0] * std[0] + mean[0]
    assert torch.all(x[:4] == 0) and torch.all(x[:, -4:] == 0)
    back = torch.nn.functional.adaptive_avg_pool2d(x[4:24, 4:24][None, None], 8)[0, 0].numpy()
    assert np.corrcoef(back.ravel(), ref.ravel())[0, 1] > 0.95
    d2 = load_dataset("digits", train_size=300, test_size=100, seed=1)
    torch.testing.assert_close(d.x_train, d2.x_train)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="train_size"):
        load_dataset("digits", train_size=0)


def test_missing_mnist_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-root"):
        load_dataset("mnist", root=tmp_path, train_size=10, test_size=10)
    with pytest.raises(FileNotFoundError, match="CIFAR10-jpeg"):
        load_dataset("cifar10", root=tmp_path, train_size=10, test_size=10)


def test_mnist_subset_matches_torchvision(data_root):
    from torchvision.datasets import MNIST
    d = load_dataset("mnist", root=data_root, train_size=500, test_size=200, seed=42, label_noise=0.1)
    ref = MNIST(str(data_root), train=True, download=False)
    idx = torch.as_tensor(d.train_indices)
    torch.testing.assert_close(d.y_train_clean, ref.targets[idx])
    x = (ref.data[idx].float() / 255.0 - 0.1307) / 0.3081
    torch.testing.assert_close(d.x_train[:, 0], x)
    assert int((d.y_train != d.y_train_clean).sum()) == 50
    assert d.x_test.shape == (200, 1, 28, 28)


def test_cifar_imagefolder_matches_pil(data_root):
    from PIL import Image
    from torchvision.datasets import ImageFolder
    if not (data_root / "CIFAR10-jpeg" / "train").is_dir():
        pytest.skip("CIFAR10-jpeg not in the data root")
    d = load_dataset("cifar10", root=data_root, train_size=12, test_size=6, seed=0)
    assert d.x_train.shape == (12, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    ds = ImageFolder(str(data_root / "CIFAR10-jpeg" / "train"))
    path, label = ds.samples[d.train_indices[3]]
    img = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(DATASET_INFO["cifar10"][3]).view(3, 1, 1)
    std = torch.tensor(DATASET_INFO["cifar10"][4]).view(3, 1, 1)
    torch.testing.assert_close(d.x_train[3], (img - mean) / std)
    assert int(d.y_train[3]) == label


def test_augmenter_integer_translation_is_a_shift():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    g = torch.Generator().manual_seed(0)
    aug = Augmenter(translate=2, fill=0.0)
    out = aug(x, g)
    g = torch.Generator().manual_seed(0)                      # replay the same draws
    torch.rand(2, generator=g)
    tx = torch.randint(-2, 3, (2,), generator=g)
    ty = torch.randint(-2, 3, (2,), generator=g)
    for b in range(2):
        ref = torch.zeros(6, 6)
        sx, sy = int(tx[b]), int(ty[b])
        src = x[b, 0]
        for i in range(6):
            for j in range(6):
                if 0 <= i - sy < 6 and 0 <= j - sx < 6:
                    ref[i, j] = src[i - sy, j - sx]
        torch.testing.assert_close(out[b, 0], ref)


def test_augmenter_identity_flip_and_fill():
    x = torch.randn(8, 3, 8, 8)
    torch.testing.assert_close(Augmenter()(x, torch.Generator().manual_seed(1)), x)
    out = Augmenter(hflip=True)(x, torch.Generator().manual_seed(1))
    for b in range(8):
        assert torch.allclose(out[b], x[b]) or torch.allclose(out[b], x[b].flip(-1))
    assert any(torch.allclose(out[b], x[b].flip(-1)) for b in range(8))
    # shifting an all-fill image keeps it all fill (per-channel fill values)
    fill = (-1.0, 0.5, 2.0)
    z = torch.tensor(fill).view(1, 3, 1, 1).expand(4, 3, 8, 8).contiguous()
    torch.testing.assert_close(Augmenter(rotation=20, translate=3, fill=fill)(z, torch.Generator().manual_seed(2)), z)
    with pytest.raises(ValueError):
        Augmenter()(torch.randn(3, 8, 8))


def test_batches_cover_every_index_once():
    idx = torch.cat(list(batches(103, 10, torch.Generator().manual_seed(0))))
    assert sorted(idx.tolist()) == list(range(103))
    assert [len(b) for b in batches(25, 10, shuffle=False)] == [10, 10, 5]
