"""Forge's VAE patcher: decode/encode through the patcher's wrappers; pixels in [0, 1], channels last."""

import torch

from backend import memory_management
from backend.patcher.base import ModelPatcher


class VAE:
    def __init__(self, model=None, device=None, dtype=None, no_init=False):
        if no_init:
            return
        self.downscale_ratio = 8
        self.latent_channels = 4
        self.first_stage_model = model.eval()
        self.device = device or memory_management.get_torch_device()
        self.vae_dtype = dtype or torch.float32
        self.output_device = memory_management.intermediate_device()
        self.patcher = ModelPatcher(self.first_stage_model, load_device=self.device, offload_device=self.device)

    def clone(self):
        n = VAE(no_init=True)
        n.patcher = self.patcher.clone()
        n.downscale_ratio = self.downscale_ratio
        n.latent_channels = self.latent_channels
        n.first_stage_model = self.first_stage_model
        n.device = self.device
        n.vae_dtype = self.vae_dtype
        n.output_device = self.output_device
        return n

    def decode_inner(self, samples_in):
        memory_management.load_models_gpu([self.patcher])
        out = torch.clamp((self.first_stage_model.decode(samples_in.to(self.vae_dtype)).float() + 1.0) / 2.0, 0.0, 1.0)
        return out.to(self.output_device).movedim(1, -1)

    def decode(self, samples_in):
        wrapper = self.patcher.model_options.get("model_vae_decode_wrapper", None)
        if wrapper is None:
            return self.decode_inner(samples_in)
        return wrapper(self.decode_inner, samples_in)

    def encode_inner(self, pixel_samples):
        regulation = self.patcher.model_options.get("model_vae_regulation", None)
        pixel_samples = pixel_samples.movedim(-1, 1)
        memory_management.load_models_gpu([self.patcher])
        pixels_in = (2.0 * pixel_samples - 1.0).to(self.vae_dtype)
        return self.first_stage_model.encode(pixels_in, regulation).to(self.output_device).float()

    def encode(self, pixel_samples):
        wrapper = self.patcher.model_options.get("model_vae_encode_wrapper", None)
        if wrapper is None:
            return self.encode_inner(pixel_samples)
        return wrapper(self.encode_inner, pixel_samples)
