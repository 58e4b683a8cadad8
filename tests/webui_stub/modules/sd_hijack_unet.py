"""The WebUI's U-Net cat that resizes a mismatched skip (v1.10.1), so latents need only be multiples of 1,
not of 8 (e.g. 1000×600 px → 125×75 latent)."""

import torch


class TorchHijackForUnet:
    def __getattr__(self, item):
        if item == 'cat':
            return self.cat
        if hasattr(torch, item):
            return getattr(torch, item)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'")

    def cat(self, tensors, *args, **kwargs):
        if len(tensors) == 2:
            a, b = tensors
            if a.shape[-2:] != b.shape[-2:]:
                a = torch.nn.functional.interpolate(a, b.shape[-2:], mode="nearest")
            tensors = (a, b)
        return torch.cat(tensors, *args, **kwargs)


th = TorchHijackForUnet()


def apply():
    import ldm.modules.diffusionmodules.openaimodel

    ldm.modules.diffusionmodules.openaimodel.th = th
