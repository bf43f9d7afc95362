"""Data: CIFAR-10 (torchvision download) or an ImageFolder folder, as cached uint8 tensors.

Images are decoded once into one uint8 tensor (N, 3, H, W) cached outside the data folder
(``cache_dir``, default ``$SMOOTHBLOCK_CACHE`` or ``~/.cache/smoothblock``), so a second run
starts in seconds. A seeded validation split is carved from the training set: searches score on
it, never on the test set, and the shipped model is trained without it.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import atomic_write
from .errors import DataError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class TensorDataset:
    """Images as uint8 (N, 3, H, W) and labels as int64 (N,), on the CPU unless moved with
    :meth:`to` (training keeps them on a GPU, 150 MB for CIFAR-10's training images)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor | slice) -> TensorDataset:
        return TensorDataset(self.images[index], self.labels[index])

    def to(self, device: torch.device | str) -> TensorDataset:
        return TensorDataset(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Splits:
    """Training images (minus validation), validation images carved from training, test images."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    classes: tuple[str, ...]


def cache_root(cache_dir: str | None = None) -> Path:
    return Path(cache_dir or os.environ.get("SMOOTHBLOCK_CACHE") or Path.home() / ".cache" / "smoothblock")


def _torchvision_cifar10(split: str, cache_dir: str | None) -> tuple[TensorDataset, tuple[str, ...]]:
    from torchvision.datasets import CIFAR10

    root = cache_root(cache_dir) / "cifar10"
    try:
        ds = CIFAR10(root=str(root), train=split == "train", download=True)
    except Exception as exc:  # URLError, socket errors, checksum failures
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"could not download CIFAR-10 into {root} ({reason}); pass --data DIR with a local "
            "ImageFolder copy (train/ and test/)"
        ) from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return TensorDataset(images, torch.tensor(ds.targets, dtype=torch.int64)), tuple(ds.classes)


def _list_folder(folder: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    classes = tuple(sorted(d.name for d in os.scandir(folder) if d.is_dir()))
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        names = sorted(e.name for e in os.scandir(folder / name)
                       if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
        files += [folder / name / n for n in names]
        labels += [label] * len(names)
    if not files:
        raise DataError(f"data folder {folder} holds no images in <class>/<image> subfolders")
    return files, labels, classes


def _decode(files: list[Path], desc: str) -> torch.Tensor:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in tqdm(files, desc=desc, unit="img", mininterval=2.0, disable=len(files) < 2000):
        try:
            with Image.open(path) as img:
                images.append(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1))
        except (OSError, UnidentifiedImageError):
            raise DataError(f"{path} is not a readable image") from None
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) != 1:
        raise DataError(f"images in {files[0].parent.parent} differ in size: {sorted(shapes)[:2]}")
    return torch.stack(images)


def _image_folder(folder: Path, split: str, cache_dir: str | None,
                  positions: torch.Tensor | None = None) -> tuple[TensorDataset, tuple[str, ...]]:
    """The folder's ``split`` in the fixed order of :func:`load_dataset`; with ``positions``,
    only the images at those places of that order are decoded (or read from the whole split's
    cache when it exists), each subset cached under its own key."""
    files, labels, classes = _list_split(folder, split)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(FOLDER_ORDER_SEED))
    # The key changes whenever the folder's list of files does, so a stale cache is never read.
    key = hashlib.sha256("\n".join(map(str, [folder.resolve(), split, *files])).encode()).hexdigest()[:16]
    whole = cache_root(cache_dir) / "folders" / f"{folder.name}-{split}-{key}.pt"
    cached = _read_cache(whole, len(files))
    if cached is not None:
        dataset = cached.take(order)
        return (dataset if positions is None else dataset.take(positions)), classes
    if positions is None:
        picked = order
        cache_file = whole
    else:
        picked = order[positions]
        subset_key = hashlib.sha256(picked.numpy().tobytes()).hexdigest()[:16]
        cache_file = whole.with_name(f"{whole.stem}-subset-{subset_key}.pt")
        cached = _read_cache(cache_file, len(picked))
        if cached is not None:
            return cached, classes
    chosen = [files[i] for i in picked.tolist()]
    what = "" if positions is None else f" ({len(chosen)} of its {len(files)} images)"
    dataset = TensorDataset(_decode(chosen, f"decoding {folder.name}/{split}{what}"),
                            torch.tensor(labels, dtype=torch.int64)[picked])
    if positions is None:  # the whole split is cached in the folder's own order
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        _write_cache(whole, dataset.take(inverse))
    else:
        _write_cache(cache_file, dataset)
    return dataset, classes


def _list_split(folder: Path, split: str) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """The files, labels and classes of ``folder/split``; DataError when the folder has no such split."""
    if folder.is_dir() and not (folder / split).is_dir():
        raise DataError(f"data folder {folder} holds no {split}/ subfolder (an ImageFolder copy needs train/ and test/)")
    return _list_folder(folder / split)


def _read_cache(path: Path, expected: int) -> TensorDataset | None:
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if len(cached["labels"]) == expected:
            return TensorDataset(cached["images"], cached["labels"])
    except Exception:  # a cache file cut short by a killed run: decode again
        log.warning("ignoring unreadable cache %s", path)
    return None


def _write_cache(path: Path, dataset: TensorDataset) -> None:
    # Through a temporary file and a rename, as every checkpoint: a full disk leaves no half-file.
    atomic_write(path, lambda tmp: torch.save({"images": dataset.images, "labels": dataset.labels}, tmp))


FOLDER_ORDER_SEED = 0


def load_dataset(data: str, split: str, cache_dir: str | None = None,
                 positions: torch.Tensor | None = None) -> tuple[TensorDataset, tuple[str, ...]]:
    """One split (``"train"`` or ``"test"``) of ``data`` ("cifar10" or an ImageFolder folder);
    with ``positions`` (indices into the split), only those images, and for a folder only those
    are decoded.

    An ImageFolder lists its images class by class, so its "first 1000 test images" would be one
    class only. Folder images are therefore put in one fixed order (a permutation seeded with
    ``FOLDER_ORDER_SEED``), so that the first n images are a mix of classes, as in CIFAR-10's own
    order, and every run sees the same order.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    if data == "cifar10":
        dataset, classes = _torchvision_cifar10(split, cache_dir)
        return (dataset if positions is None else dataset.take(positions)), classes
    return _image_folder(Path(data).expanduser(), split, cache_dir, positions)


def split_indices(n: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, val) index split of ``n`` training images; val has ``val_size`` images."""
    if val_size >= n:
        raise DataError(f"val_size {val_size} leaves no training images out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def load_splits(data: str, *, val_size: int = 5000, split_seed: int = 0, subset: int | None = None,
                cache_dir: str | None = None, need_test: bool = True, val_images: int | None = None) -> Splits:
    """Training, validation and test sets.

    ``subset`` keeps the first ``subset`` training images of a seeded shuffle (after the
    validation images are removed), so a subset never overlaps validation. ``val_images`` keeps
    the first that many of the validation split. With ``subset=0`` (a post-hoc search) a folder's
    only decoded images are those validation images: none of the training images proper.
    """
    # CIFAR-10's download is read whole anyway.
    full_train = load_dataset(data, "train", cache_dir) if data == "cifar10" else None
    # A folder is listed, not decoded, to count its training images.
    n = len(full_train[0]) if full_train is not None else len(_list_split(Path(data).expanduser(), "train")[0])
    train_idx, val_idx = split_indices(n, val_size, split_seed)
    val_idx = val_idx[:val_images]
    if subset is not None:
        shuffled = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(split_seed + 1))]
        train_idx = shuffled[:subset].sort().values
    if full_train is None and len(train_idx) == 0 and len(val_idx) > 0:
        val, classes = load_dataset(data, "train", cache_dir, positions=val_idx)
        train = _empty_like(val)
    else:
        images, classes = full_train or load_dataset(data, "train", cache_dir)
        train, val = images.take(train_idx), images.take(val_idx)
    # New empty tensors, not a [:0] view: a view keeps (and pickles, when a search ships its
    # assets to every worker) the whole training set's storage.
    test = load_dataset(data, "test", cache_dir)[0] if need_test else _empty_like(val)
    return Splits(train, val, test, classes)


def _empty_like(dataset: TensorDataset) -> TensorDataset:
    return TensorDataset(dataset.images.new_empty((0, *dataset.images.shape[1:])), dataset.labels.new_empty((0,)))


def fingerprint(dataset: TensorDataset) -> str:
    """SHA-256 of the images and labels, in order: what identifies measured or crafted results of
    these images (another copy of the data, or the same data in another order, is another key)."""
    digest = hashlib.sha256(dataset.images.contiguous().cpu().numpy().tobytes())
    digest.update(dataset.labels.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def to_float(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1] on ``device``."""
    return images.to(device, non_blocking=True).float().div_(255.0)


def iterate_batches(dataset: TensorDataset, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                    drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images float in [0, 1], labels) batches from tensors; no per-image Python work."""
    n = len(dataset)
    # Drawn on the CPU whatever the device, so that a run shuffles alike on every machine.
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(dataset.images.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield to_float(dataset.images[idx], device), dataset.labels[idx].to(device, non_blocking=True)


def augment(x: torch.Tensor, *, padding: int = 4, cutout: int = 0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding, random horizontal flip and optional Cutout, on a whole batch.

    Cutout (DeVries & Taylor 2017, "Improved Regularization of Convolutional Neural Networks with
    Cutout") fills one ``cutout`` x ``cutout`` square per image, centred anywhere in the image and
    clipped at its border, with the batch's per-channel mean. The paper fills with zero after
    normalisation, i.e. with the data's mean; the batch mean is that without knowing the data.

    Args:
        x: images (N, C, H, W) in [0, 1].
        padding: pixels of zero padding before cropping back to H x W.
        cutout: side of the square; 0 for none (and then no random numbers are drawn for it, so
            runs without Cutout draw exactly what they drew before it existed).
        generator: CPU generator for the offsets, flips and squares.

    Returns:
        Augmented images, same shape.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = _to_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator), x.device)
    dx = _to_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator), x.device)
    flip = _to_device(torch.rand(n, generator=generator) < 0.5, x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing gathers every crop at once: result (N, H, W, C) -> (N, C, H, W).
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if cutout > 0:
        cy = _to_device(torch.randint(0, h, (n,), generator=generator), x.device)
        cx = _to_device(torch.randint(0, w, (n,), generator=generator), x.device)
        top, left = cy - cutout // 2, cx - cutout // 2
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        inside_rows = (ys >= top[:, None]) & (ys < top[:, None] + cutout)
        inside_cols = (xs >= left[:, None]) & (xs < left[:, None] + cutout)
        square = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]  # (N, 1, H, W)
        out = torch.where(square, x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1), out)
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor of random draws onto ``device``; through pinned memory for a GPU, since a copy
    from ordinary memory waits for the GPU to finish all queued work first."""
    if device.type != "cuda":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)
