"""Per-image noise from per-image seeds, so an image does not depend on its batch (as the WebUI); drawn on
the CPU and moved to ``devices.device``, as the WebUI's "CPU" noise source."""

import torch

from modules import devices


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(shape)
        self.seeds = seeds
        self.generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        self.is_first = True

    def first(self):
        self.is_first = False
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(devices.device)

    def next(self):
        if self.is_first:
            return self.first()
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(devices.device)
