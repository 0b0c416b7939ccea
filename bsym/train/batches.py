"""The batches a training run consumes: a resumable data order, labels as targets.

The data order of epoch ``e`` is a permutation drawn from ``(seed, e)``, and the stream
counts the micro-batches it served, so a resumed run skips exactly those and continues
with the same batches as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data._utils.collate import default_collate

from bsym.errors import UsageError
from bsym.train import devices


class ResumableSampler(DistributedSampler):
    """:class:`DistributedSampler` whose epoch ``e`` order is drawn from ``(seed, e)`` and
    which can skip the first samples of an epoch (those consumed before a resume)."""

    def __init__(self, dataset, *, num_replicas=1, rank=0, seed=0, shuffle=True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=int(seed), drop_last=False)
        self.skip = 0

    def set_epoch(self, epoch, skip=0):
        super().set_epoch(epoch)
        self.skip = int(skip)

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self):
        return self.num_samples - self.skip


def collate(items):
    return default_collate(items)


class BatchStream:
    """Endless micro-batches over epochs; ``consumed`` counts them (per process)."""

    def __init__(self, dataset, *, batch_size, seed, env, num_workers, pin_memory, consumed=0):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        loader_seed = devices.derive_seed(seed, devices.SEED_LOADER, 0, 0) % 2**31
        self.sampler = ResumableSampler(dataset, num_replicas=env.world_size, rank=env.rank,
                                        seed=loader_seed)
        self.per_epoch = self.sampler.num_samples // batch_size
        if self.per_epoch < 1:
            most = len(dataset) // env.world_size
            raise UsageError(
                f"the training set has {len(dataset)} samples: too few for one batch of "
                f"{batch_size} per process x {env.world_size} process(es); lower batch_size. "
                f"Fix: a batch size (--batch-size) of at most {max(most, 1)}, or more scans or "
                "windows (a shorter --window, --stride)")
        self.consumed = int(consumed)
        self._it = None

    @property
    def epoch(self) -> int:
        return self.consumed // self.per_epoch

    def _open(self):
        epoch, offset = divmod(self.consumed, self.per_epoch)
        self.sampler.set_epoch(epoch, skip=offset * self.batch_size)
        if hasattr(self.dataset, "set_epoch"):  # random window starts, drawn per epoch
            self.dataset.set_epoch(epoch)
        seed = devices.derive_seed(self.seed, devices.SEED_LOADER, epoch, 1)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                            drop_last=True, num_workers=self.num_workers,
                            worker_init_fn=devices.seed_worker,
                            generator=torch.Generator().manual_seed(seed),
                            collate_fn=collate, pin_memory=self.pin_memory)
        self._it = iter(loader)

    def __next__(self):
        if self._it is None:
            self._open()
        try:
            batch = next(self._it)
        except StopIteration:
            self._it = None
            if self.consumed % self.per_epoch:  # pragma: no cover - guarded by drop_last
                raise RuntimeError("data stream ended mid-epoch") from None
            return next(self)
        self.consumed += 1
        return batch

    def close(self):
        self._it = None


def to_device(batch, device):
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


def describe_data(dataset) -> dict:
    """ROI count, window length, sample count and manifest hash of a window dataset."""
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: expected at least one window")
    first = dataset[0]
    if not isinstance(first, Mapping) or "bold" not in first:
        raise ValueError(f"dataset items must be dicts with a 'bold' (ROIs x time) tensor, "
                         f"received {type(first).__name__}")
    n_rois, window = (int(s) for s in first["bold"].shape[-2:])
    cohort = getattr(dataset, "cohort", None)
    info = {"n_rois": n_rois, "window": window, "n_samples": len(dataset),
            "manifest_hash": getattr(cohort, "manifest_hash", None),
            "has_sc": "sc" in first}
    if hasattr(dataset, "describe"):
        info["dataset"] = dataset.describe()
    return info


def label_classes(dataset, label):
    """Sorted class names of a non-numeric label (None for a numeric one)."""
    table = getattr(dataset, "table", None)
    if table is not None and label in getattr(table, "columns", ()):
        values = table[label]
        if values.dtype.kind in "biufc" and values.dtype.kind != "b":
            return None
        return sorted({str(v) for v in values})
    first = dataset[0].get("labels", {})
    if label not in first:
        raise ValueError(f"the training dataset has no label {label!r}; build it with "
                         f"labels=[{label!r}] (it has {sorted(first)})")
    if isinstance(first[label], (int, float)) and not isinstance(first[label], bool):
        return None
    return sorted({str(dataset[i]["labels"][label]) for i in range(len(dataset))})


def label_targets(batch, label, classes, device):
    """The batch's ``label`` as a target tensor: class indices, or float values."""
    labels = batch.get("labels")
    if not labels or label not in labels:
        raise ValueError(f"batch has no label {label!r}: build the dataset with labels="
                         f"[{label!r}]")
    y = labels[label]
    if classes is not None:
        lookup = {c: i for i, c in enumerate(classes)}
        try:
            y = torch.tensor([lookup[str(v)] for v in y], dtype=torch.long)
        except KeyError as err:
            raise ValueError(f"label {label!r} value {err.args[0]!r} is not among the training "
                             f"classes {classes}") from None
    elif not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    if y.is_floating_point():
        y = y.float()
    elif y.dtype == torch.bool:
        y = y.long()
    return y.to(device)
