"""Training data order and augmentation as pure functions of (seed, epoch, image).

- `TrainSampler` is torch's DistributedSampler (per-epoch permutation seeded with seed + epoch,
  padded to a multiple of the world size, rank r takes every world_size-th index) that also
  starts mid-epoch (`set_epoch(epoch, start=n)` skips the n samples this rank already used)
  and tags each index with its epoch.
- `SeededSamples` reseeds the augmentation RNG from (seed, epoch, index) before loading each
  sample, so an image gets the same flip and scale whichever worker, rank or resumed process
  loads it.

Together: resuming at batch k of epoch e feeds exactly the batches an uninterrupted run would,
for any `workers`; and a 2-rank run with batch b per rank sees, step by step, the same images
and augmentations as one process with batch 2b.
"""

import signal

import numpy as np
from torch.utils.data import Dataset, DistributedSampler, get_worker_info

from ..datasets.transforms import seed_rng

__all__ = ["TrainSampler", "SeededSamples"]


class TrainSampler(DistributedSampler):
    """Yields (epoch, index) pairs; works without a process group (rank/world_size given).

    Made before its dataset: build_dataloader(..., sampler=s, wrap=s.wrap) hands the dataset to
    `wrap`, which sizes the sampler and returns the dataset as SeededSamples.
    """

    def __init__(self, *, rank: int, world_size: int, seed: int, shuffle: bool = True):
        self._options = dict(num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def wrap(self, dataset: Dataset) -> "SeededSamples":
        super().__init__(dataset, **self._options)
        return SeededSamples(dataset, seed=self.seed)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; skip the first `start` samples of this rank (resume)."""
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())[self.start :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededSamples(Dataset):
    """`dataset[index]` with the transforms' RNG seeded from (seed, epoch, index); takes (epoch, index) keys."""

    def __init__(self, dataset: Dataset, *, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        if get_worker_info() is not None:
            _leave_stop_signals_to_the_main_process()
        epoch, index = key
        seed_rng(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))
        return self.dataset[index]

    def __getattr__(self, name: str):  # names, coco, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


_workers_ignore_signals = False


def _leave_stop_signals_to_the_main_process() -> None:
    """In a loader worker: ignore SIGINT/SIGTERM. A Ctrl-C or scancel reaches every process;
    the main process then finishes its iteration and saves (resume.GracefulStop), which a
    worker dying under it would break. Workers still end with the loader or their parent."""
    global _workers_ignore_signals
    if not _workers_ignore_signals:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _workers_ignore_signals = True
