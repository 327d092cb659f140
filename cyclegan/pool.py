"""Image history for the discriminators (Shrivastava et al. 2017, used by CycleGAN with 50 images)."""
from __future__ import annotations

import torch


class ImagePool:
    """Until ``size`` images are stored, a query returns its input and stores it. Afterwards each
    image, with probability 1/2, swaps with a random stored one (the stored one is returned), else
    passes through.

    Everything lives on the images' device: the store, the count of stored images, and the decisions,
    drawn from that device's RNG. Filling and swapping are one code path (while filling, the slot is the
    next free one and the image is always kept), so a step has no host sync and no branch on the device's
    state, and can be captured in a CUDA graph.
    """

    def __init__(self, size: int, device: torch.device | str = "cpu"):
        self.size = size
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.images: torch.Tensor | None = None  # (size, C, H, W), allocated at the first query

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, C, H, W)`` drawn from the input and the history."""
        if self.size == 0:
            return images
        images = images.detach()
        if self.images is None:
            self.images = images.new_zeros((self.size, *images.shape[1:]))
        n = images.shape[0]
        swap = torch.rand(n, device=images.device) < 0.5
        random_slot = torch.randint(self.size, (n,), device=images.device)
        out = []
        for i in range(n):
            image = images[i:i + 1]
            filling = self.count < self.size
            slot = torch.where(filling, self.count, random_slot[i]).view(1)
            stored = self.images.index_select(0, slot)
            keep_new = filling | swap[i]
            self.images.index_copy_(0, slot, torch.where(keep_new, image, stored))
            out.append(torch.where(keep_new & ~filling, stored, image))
            self.count.add_(filling.long())
        return torch.cat(out)

    def state_dict(self) -> dict:
        """The count and a copy of the stored images, on the CPU."""
        return {"count": int(self.count), "images": None if self.images is None else self.images.to("cpu", copy=True)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned, onto this pool's device."""
        self.count.fill_(state["count"])
        self.images = None if state["images"] is None else state["images"].to(self.count.device, copy=True)
