"""Image history for the discriminators (Shrivastava et al. 2017, used by CycleGAN with 50 images)."""
from __future__ import annotations

import torch


class ImagePool:
    """Until ``size`` images are stored, a query returns its input and stores it. Afterwards each
    image, with probability 1/2, swaps with a random stored one (the stored one is returned), else
    passes through. Decisions are drawn on the images' device from torch's RNG, with no host sync.
    """

    def __init__(self, size: int):
        self.size = size
        self.count = 0
        self.images: torch.Tensor | None = None

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, C, H, W)`` drawn from the input and the history."""
        if self.size == 0:
            return images
        images = images.detach()
        if self.images is None:
            self.images = images.new_zeros((self.size, *images.shape[1:]))
        out = []
        for i in range(images.shape[0]):
            image = images[i:i + 1]
            if self.count < self.size:
                self.images[self.count:self.count + 1] = image
                self.count += 1
                out.append(image)
                continue
            swap = torch.rand((1, 1, 1, 1), device=images.device) < 0.5
            slot = torch.randint(self.size, (1,), device=images.device)
            stored = self.images.index_select(0, slot)
            self.images.index_copy_(0, slot, torch.where(swap, image, stored))
            out.append(torch.where(swap, stored, image))
        return torch.cat(out)

    def state_dict(self) -> dict:
        """The count and stored images (on the CPU)."""
        return {"count": self.count, "images": None if self.images is None else self.images.cpu()}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.count = state["count"]
        self.images = None if state["images"] is None else state["images"].to(device)
