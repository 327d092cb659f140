"""Image sets on the device and their batches.

The cached uint8 images move to the GPU once (:class:`DeviceImages`), or, when they would take too much
of its memory, stay in host memory (for gan-train, the memory-mapped cache) and stream batch by batch
(:class:`StreamedImages`); both give the same batches in the same seeded order.
"""
from __future__ import annotations

import torch


def fits_on_device(nbytes: int, device: torch.device | str, share: float) -> bool:
    """Whether a uint8 image cache of ``nbytes`` is held on ``device`` (:class:`DeviceImages`) rather than
    streamed (:class:`StreamedImages`): on a GPU while it takes at most ``share`` of the GPU's memory, on
    the CPU always; ``share`` 0 streams on both."""
    device = torch.device(device)
    if share <= 0:
        return False
    if device.type != "cuda":
        return True
    return nbytes <= share * torch.cuda.get_device_properties(device).total_memory


class DeviceImages:
    """A uint8 image set held on ``device``; batches are gathered there.

    Args:
        images: ``uint8 (N, 1, S, S)`` (the memory-mapped cache, say).
        labels: ``int64 (N,)``.
        device: where the set lives.
        rows: ``int64 (M,)``: the set is ``images[rows]``, ``labels[rows]`` (default: all of them).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device | str,
                 rows: torch.Tensor | None = None):
        if rows is not None:
            images, labels = images[rows], labels[rows]
        self.images = images.to(device, non_blocking=True).contiguous()
        self.labels = labels.to(device)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float ``(B, 1, S, S)`` in [0, 1] and labels ``(B,)`` for positions ``idx``; no copy when
        ``idx`` is on the device already."""
        idx = idx.to(self.device)
        return self.images[idx].float().div_(255), self.labels[idx]

    def batches(self, order: torch.Tensor) -> EpochBatches:
        """The batches of positions ``order (steps, B)`` (an epoch, say), which moves to the device once
        here, so that fetching a batch copies nothing and never waits for the host."""
        return EpochBatches(self, order.to(self.device))


class StreamedImages:
    """A uint8 image set left in host memory (memory-mapped cache pages are read when a batch needs them),
    for sets too large for the device. Same interface and same batches as :class:`DeviceImages`: each
    batch is gathered on the host and copied to ``device`` (on a GPU through pinned buffers on a side
    stream, one batch ahead: :meth:`batches`).

    Args: as :class:`DeviceImages`; ``images`` and ``labels`` stay on the host.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device | str,
                 rows: torch.Tensor | None = None):
        self.images, self.rows = images, rows
        self.labels = labels if rows is None else labels[rows]
        self.device = torch.device(device)
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, idx: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None):
        """uint8 images ``(B, 1, S, S)`` and labels ``(B,)`` of host positions ``idx``, on the host (into
        ``out`` when given)."""
        rows = idx if self.rows is None else self.rows[idx]
        x, y = out or (None, None)
        return torch.index_select(self.images, 0, rows, out=x), torch.index_select(self.labels, 0, idx, out=y)

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`DeviceImages.get`, without prefetching; an ``idx`` on a GPU costs a host sync."""
        x, y = self.gather(idx.cpu())
        return x.to(self.device).float().div_(255), y.to(self.device)

    def batches(self, order: torch.Tensor) -> EpochBatches:
        """The batches of host positions ``order (steps, B)``; on a GPU each one is copied while the one
        before it is used."""
        return PrefetchedBatches(self, order.cpu()) if self.copy_stream is not None else EpochBatches(self, order.cpu())


def image_sets(images: torch.Tensor, labels: torch.Tensor, device: torch.device | str, share: float,
               *rows: torch.Tensor | None) -> list[DeviceImages | StreamedImages]:
    """One image set per ``rows`` (``int64 (M,)`` positions in ``images``; None: all of them): all held on
    ``device`` when together they fit ``share`` of its memory (:func:`fits_on_device`), else all streamed."""
    n = sum(len(images) if r is None else len(r) for r in rows)
    kind = DeviceImages if fits_on_device(n * images[0].numel(), device, share) else StreamedImages
    return [kind(images, labels, device, r) for r in rows]


class EpochBatches:
    """``batches[pos]``: float images ``(B, 1, S, S)`` in [0, 1] and labels ``(B,)`` on the device, of the
    positions ``order[pos]`` of an image set."""

    def __init__(self, images: DeviceImages | StreamedImages, order: torch.Tensor):
        self.images, self.order = images, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images.get(self.order[pos])


class PrefetchedBatches(EpochBatches):
    """Batches of a :class:`StreamedImages` on a GPU: batch ``pos`` is gathered into one of two pinned host
    buffers and copied on the set's side stream; fetching it starts batch ``pos + 1``, so a loop reading
    in order finds each batch copied while the previous one trained."""

    def __init__(self, images: StreamedImages, order: torch.Tensor):
        super().__init__(images, order)
        shape = (order.shape[1], *images.images.shape[1:])
        self.host = [(torch.empty(shape, dtype=torch.uint8).pin_memory(),
                      torch.empty(order.shape[1], dtype=torch.long).pin_memory()) for _ in range(2)]
        self.copied = [torch.cuda.Event() for _ in range(2)]  # the last copy out of each buffer
        self.ahead: tuple[int, torch.Tensor, torch.Tensor] | None = None  # pos, images, labels in flight

    def __getitem__(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.ahead[1:] if self.ahead is not None and self.ahead[0] == pos else self._copy(pos)
        stream = torch.cuda.current_stream(self.images.device)
        stream.wait_stream(self.images.copy_stream)
        x.record_stream(stream)
        y.record_stream(stream)
        self.ahead = (pos + 1, *self._copy(pos + 1)) if pos + 1 < len(self) else None
        return x.float().div_(255), y

    def _copy(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather batch ``pos`` into a pinned buffer and start its copy to the device."""
        slot = self.host[pos % 2]
        self.copied[pos % 2].synchronize()  # that buffer's previous copy has finished
        x, y = self.images.gather(self.order[pos], out=slot)
        with torch.cuda.stream(self.images.copy_stream):
            x, y = x.to(self.images.device, non_blocking=True), y.to(self.images.device, non_blocking=True)
            self.copied[pos % 2].record()
        return x, y


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True,
                  drop_last: bool = True) -> list[torch.Tensor]:
    """One epoch of positions ``0..n-1`` as ``int64 (batch_size,)`` chunks, shuffled by ``generator``.

    With ``drop_last`` and ``n < batch_size`` one full batch is drawn with replacement, so a tiny
    set still trains.
    """
    if n == 0:
        return []
    if drop_last and n < batch_size:
        return [torch.randint(n, (batch_size,), generator=generator)]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    batches = list(order.split(batch_size))
    if drop_last and len(batches[-1]) < batch_size:
        batches.pop()
    return batches
