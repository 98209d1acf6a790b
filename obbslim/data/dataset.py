"""The torch Dataset of oriented objects and its loaders (training: mosaic + augmentation; validation:
letterboxed rectangular batches).

Reproducibility: every item draws its randomness from ``np.random.default_rng([seed, epoch, index])``,
so a batch does not depend on the number of workers or on which worker made it. The sampler carries
the epoch to the workers with each index (``(epoch, index)`` pairs), which also works with persistent
workers; it moves to the next epoch on every pass, or to the one given with ``set_epoch``.

Unreadable images: the scan (``load_split``) already skips images it cannot read, so a failure here
means the file changed or broke since. Training must not die mid-epoch for one file: the image is
replaced by the next readable one, a warning names the file once, and ``OBBDataset.n_replaced``
counts the replacements made in this process. Only when no image at all can be read does it raise
``InputError``.
"""

from __future__ import annotations

import logging
import random
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from obbslim.cfg import load_hyp
from obbslim.data.augment import (
    augment_hsv,
    filter_polys,
    flip_diag,
    flip_lr,
    flip_ud,
    letterbox,
    letterbox_polys,
    mixup,
    mosaic4,
    random_affine,
    to_rboxes,
)
from obbslim.data.labels import load_split
from obbslim.errors import InputError
from obbslim.ops import poly_area
from obbslim.utils.threads import default_workers

__all__ = [
    "OBBDataset", "collate_fn", "build_dataloader", "EpochSampler", "RectBatchSampler", "set_epoch",
    "close_workers",
]

LOGGER = logging.getLogger("obbslim")


class OBBDataset(Dataset):
    """Images and rotated-box targets for training and validation.

    An item is ``(img, targets, im_file, (h0, w0), ratio_pad)``: ``img`` uint8 [3, H, W] RGB,
    ``targets`` float32 [n, 7] = ``[0, cls, cx, cy, w, h, theta]`` in pixels of ``img`` (the
    collate function sets column 0 to the image index), ``(h0, w0)`` the original size and
    ``ratio_pad = ((rw, rh), (padw, padh))`` mapping original pixels to ``img`` pixels
    (``x * rw + padw``), or None for a mosaic. Difficult flags are not in the targets (the loss
    trains on every object); validation reads ``dataset.samples[i].difficult`` (with ``rect`` the
    samples are re-ordered by aspect ratio, and ``samples`` holds that order).
    """

    def __init__(
        self,
        samples: Sequence[Any],
        imgsz: int = 640,
        augment: bool = False,
        hyp: dict[str, Any] | None = None,
        rect: bool = False,
        batch_size: int = 16,
        stride: int = 32,
        pad: float = 0.5,
        seed: int = 0,
        cache_images: bool = False,
    ):
        self.samples = list(samples)
        if not self.samples:
            raise InputError("no images to load (empty split)")
        self.imgsz = int(imgsz)
        self.augment = bool(augment)
        self.hyp = load_hyp(hyp)
        self.rect = bool(rect)
        self.mosaic = self.augment and not self.rect
        self.stride = int(stride)
        self.seed = int(seed)
        self.epoch = 0
        self.mosaic_epochs: int | None = None  # epochs >= this train without mosaic (close_mosaic)
        self.n_replaced = 0
        self._warned: set[str] = set()
        self.batch_shapes = None
        if self.rect:
            self._set_rect(batch_size, pad)
        self._cache: list[tuple | None] | None = None
        self.cache_bytes = self.cache_images() if cache_images else 0

    def cache_images(self, threads: int = 4) -> int:
        """Decode and resize every image once into RAM (before the workers fork, so they share it).

        Image decoding dominates the loader (a mosaic reads 4 images per item); the cache costs about
        ``len(self) * imgsz**2 * 3`` bytes. Returns the bytes used.
        """
        self._cache = None
        with ThreadPoolExecutor(threads) as pool:
            items = list(pool.map(self._load_resized, range(len(self))))
        self._cache = [item if item[1] == i else None for i, item in enumerate(items)]
        return sum(item[0].nbytes for item in self._cache if item is not None)

    def _set_rect(self, batch_size: int, pad: float) -> None:
        """Sort by aspect ratio and give each batch the smallest stride-multiple shape (YOLOv5 rect)."""
        hw = np.array([s.shape[:2] for s in self.samples], np.float64)
        ar = hw[:, 0] / hw[:, 1]
        order = np.argsort(ar, kind="stable")
        self.samples = [self.samples[i] for i in order]
        ar = ar[order]
        n = len(ar)
        self.batch = np.arange(n) // batch_size
        nb = int(self.batch[-1]) + 1
        shapes = np.ones((nb, 2))  # (h, w) relative to the long side
        for b in range(nb):
            a = ar[self.batch == b]
            if a.max() < 1:
                shapes[b] = [a.max(), 1]
            elif a.min() > 1:
                shapes[b] = [1, 1 / a.min()]
        self.batch_shapes = np.ceil(shapes * self.imgsz / self.stride + pad).astype(int) * self.stride

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, i: int) -> tuple[np.ndarray, int]:
        """cv2.imread sample i, or the next readable one (warns once per bad file)."""
        n = len(self.samples)
        for k in range(n):
            j = (i + k) % n
            f = str(self.samples[j].im_file)
            img = cv2.imread(f, cv2.IMREAD_COLOR)
            if img is not None:
                if k:
                    self.n_replaced += 1
                return img, j
            if f not in self._warned:
                self._warned.add(f)
                LOGGER.warning("obbslim: cannot read image %s; replacing it with the next image", f)
        raise InputError("no image of this split can be read", self.samples[i].im_file)

    def _load_resized(self, i: int) -> tuple[np.ndarray, int, tuple[int, int]]:
        """Image i (or its replacement j) resized so its long side is ``imgsz``, and its decoded size."""
        if self._cache is not None and self._cache[i] is not None:
            return self._cache[i]
        img, j = self._read(i)
        h0, w0 = img.shape[:2]
        r = self.imgsz / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            img = cv2.resize(img, (max(1, round(w0 * r)), max(1, round(h0 * r))), interpolation=interp)
        return img, j, (h0, w0)

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], np.ndarray, np.ndarray, int]:
        """Image i resized so its long side is ``imgsz``, with its polygons and classes in those pixels.

        Returns ``(img, (h0, w0), polys, cls, j)`` where j is the sample actually read.
        """
        img, j, (h0, w0) = self._load_resized(i)
        s = self.samples[j]
        h, w = img.shape[:2]
        polys = np.asarray(s.polys, np.float32).reshape(-1, 8).copy()
        polys[:, 0::2] *= w / w0
        polys[:, 1::2] *= h / h0
        return img, (h0, w0), polys, np.asarray(s.cls, np.int64).reshape(-1), j

    def _mosaic_loader(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        img, _, polys, cls, _ = self.load_image(i)
        return img, polys, cls

    def __getitem__(self, index: int | tuple[int, int]):
        epoch, i = index if isinstance(index, tuple) else (self.epoch, index)
        i = int(i)
        rng = np.random.default_rng([self.seed, int(epoch), i])
        hyp = self.hyp
        n = len(self.samples)
        mosaic = self.mosaic and (self.mosaic_epochs is None or epoch < self.mosaic_epochs)
        if mosaic and rng.random() < hyp["mosaic"]:
            s = self.imgsz
            img, polys, cls = mosaic4(self._mosaic_loader, [i, *rng.integers(0, n, 3)], s, rng)
            if rng.random() < hyp["mixup"]:
                img2, polys2, cls2 = mosaic4(self._mosaic_loader, list(rng.integers(0, n, 4)), s, rng)
                img, polys, cls = mixup(img, polys, cls, img2, polys2, cls2, rng)
            border = (-(s // 2), -(s // 2))
            j, ratio_pad = i, None
            h0, w0 = self.samples[i].shape[:2]
        else:
            img, (h0, w0), polys, cls, j = self.load_image(i)
            h1, w1 = img.shape[:2]
            shape = tuple(self.batch_shapes[self.batch[i]]) if self.rect else (self.imgsz, self.imgsz)
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            polys = letterbox_polys(polys, ratio, pad)
            ratio_pad = ((w1 / w0 * ratio[0], h1 / h0 * ratio[1]), pad)
            border = (0, 0)
        if self.augment:
            area0 = poly_area(polys)
            img, polys, sc = random_affine(
                img, polys, rng, hyp["degrees"], hyp["translate"], hyp["scale"], hyp["shear"], border
            )
            keep = filter_polys(polys, img.shape[:2], hyp["min_size"], area_before=area0, scale=sc)
            polys, cls = polys[keep], cls[keep]
            img = augment_hsv(img, rng, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])
            if rng.random() < hyp["flipud"]:
                img, polys = flip_ud(img, polys)
            if rng.random() < hyp["fliplr"]:
                img, polys = flip_lr(img, polys)
            if img.shape[0] == img.shape[1] and rng.random() < hyp["flipdiag"]:
                img, polys = flip_diag(img, polys)
        targets = np.zeros((len(polys), 7), np.float32)
        targets[:, 1] = cls
        targets[:, 2:] = to_rboxes(polys)
        chw = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))
        return (
            torch.from_numpy(chw),
            torch.from_numpy(targets),
            str(self.samples[j].im_file),
            (h0, w0),
            ratio_pad,
        )


def collate_fn(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple, tuple]:
    """Stack images and concatenate targets, writing each target's image index in column 0."""
    imgs, targets, files, shapes, ratio_pads = zip(*batch)
    for k, t in enumerate(targets):
        t[:, 0] = k
    return torch.stack(imgs, 0), torch.cat(targets, 0), files, shapes, ratio_pads


class EpochSampler(DistributedSampler):
    """DistributedSampler (also for one process) that yields ``(epoch, index)`` pairs.

    The epoch reaches the dataset inside each worker with the index; each pass moves to the next
    epoch unless ``set_epoch`` chose one. Shuffling is seeded by ``seed + epoch`` (resumable).
    """

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(
            dataset, num_replicas=world_size, rank=max(rank, 0), shuffle=shuffle, seed=seed, drop_last=False
        )

    def __iter__(self):
        epoch = self.epoch
        indices = list(super().__iter__())
        self.epoch = epoch + 1
        return iter([(epoch, i) for i in indices])


class RectBatchSampler(Sampler):
    """Fixed batches of consecutive indices (the rect order), batch b on rank ``b % world_size``.

    Keeps every batch whole so all its images share one letterbox shape; yields ``(epoch, index)``.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.batches = [list(range(k, min(k + batch_size, n))) for k in range(0, n, batch_size)]
        self.batches = self.batches[max(rank, 0) :: world_size]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        epoch = self.epoch
        self.epoch = epoch + 1
        return iter([[(epoch, i) for i in b] for b in self.batches])


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Make the next pass over ``loader`` use ``epoch`` (augmentation and shuffle order)."""
    sampler = loader.batch_sampler if isinstance(loader.batch_sampler, RectBatchSampler) else loader.sampler
    sampler.set_epoch(epoch)


def close_workers(loader: DataLoader | None) -> None:
    """Stop a loader's persistent workers now; the next pass starts fresh ones (that see the dataset's
    current attributes). Call it when a run ends, also by an error: the workers ignore SIGTERM (see
    :func:`_worker_init`), so a loader kept alive until interpreter exit (by a stored traceback, say)
    would block the exit while multiprocessing waits for them."""
    it = getattr(loader, "_iterator", None)
    if it is None:
        return
    if hasattr(it, "_shutdown_workers"):  # (a single-process iterator has no workers)
        it._shutdown_workers()
    loader._iterator = None


def _worker_init(worker_id: int) -> None:
    """Seed the global RNGs of a worker (torch gives each worker base_seed + id from the loader's
    seeded generator) for any code that uses them; the augmentations use their own per-item rng."""
    seed = torch.utils.data.get_worker_info().seed % 2**32
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(0)
    # Ctrl-C / SIGTERM sent to the whole process group is the main process's business: it finishes the
    # step and saves last.pt, then shuts the workers down. A worker dying first would crash that.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_dataloader(
    data: Any,
    split: str,
    imgsz: int,
    batch_size: int,
    augment: bool,
    hyp: dict[str, Any] | None = None,
    workers: int | None = 0,
    shuffle: bool | None = None,
    seed: int = 0,
    rank: int = -1,
    world_size: int = 1,
    rect: bool | None = None,
    stride: int = 32,
    persistent_workers: bool = False,
    pin_memory: bool = False,
    cache_images: bool = False,
) -> DataLoader:
    """A DataLoader over a split: ``data`` is a list of Samples, a data dict or a dataset YAML path.

    Training (``augment=True``): mosaic + augmentation, shuffled. Validation (``augment=False``):
    letterbox only, rectangular batches (``rect`` defaults to ``not augment``) in aspect-ratio order.
    With ``world_size > 1`` each rank gets its share (DistributedSampler, or whole rect batches).
    ``cache_images`` keeps the decoded, resized images in RAM. ``loader.dataset`` is the OBBDataset;
    call ``set_epoch(loader, e)`` to choose the epoch of the next pass (default: one more each pass).
    ``workers`` None: min(8, cores - 1) (:func:`obbslim.utils.threads.default_workers`).
    """
    if isinstance(data, (list, tuple)):
        samples = list(data)
    else:
        samples, _ = load_split(data, split)
    rect = (not augment) if rect is None else rect
    shuffle = (augment and not rect) if shuffle is None else shuffle
    dataset = OBBDataset(
        samples,
        imgsz,
        augment,
        hyp,
        rect=rect,
        batch_size=batch_size,
        stride=stride,
        pad=0.0 if augment else 0.5,
        seed=seed,
        cache_images=cache_images,
    )
    workers = min(default_workers(workers), max(batch_size, 1))
    g = torch.Generator()
    g.manual_seed(seed)
    common = dict(
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        generator=g,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=persistent_workers and workers > 0,
    )
    if rect:
        if shuffle:
            raise ValueError("rect batches keep the aspect-ratio order: use shuffle=False with rect=True")
        return DataLoader(
            dataset, batch_sampler=RectBatchSampler(len(dataset), batch_size, rank, world_size), **common
        )
    sampler = EpochSampler(dataset, shuffle, seed, rank, world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **common)
