"""The epoch sampler of UNIP training: the order of an epoch is a function of (seed, epoch) alone, so a resumed run
sees exactly the samples and augmentations an uninterrupted one would."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """Order of one epoch as a function of `(seed, epoch)` only; yields `(epoch, index)` keys.

    The dataset receives `(epoch, index)` in `__getitem__` and can derive a per-sample augmentation seed from it, so
    that what a sample looks like does not depend on which process loads it, on worker RNG, or on whether the run was
    resumed. Call `set_epoch` before iterating each epoch.

    Args:
        num_samples (`int`): length of the dataset.
        seed (`int`, *optional*, defaults to 0): shuffle seed.
        shuffle (`bool`, *optional*, defaults to `True`): shuffle (else sequential order).
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = range(self.num_samples)
        for index in order:
            yield (self.epoch, int(index))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A deterministic 63-bit seed for one sample of one epoch."""
    value = (int(seed) * 6364136223846793005 + int(epoch) * 1442695040888963407 + int(index) * 2862933555777941757)
    return value % (2**63 - 1)
