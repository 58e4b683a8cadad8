"""Forge (lllyasviel/stable-diffusion-webui-forge, its ``backend`` since 2024-08): the features on its U-Net patcher.

Forge samples through ``p.sd_model.forge_objects``, which it resets from ``forge_objects_after_applying_lora``
before each sampling pass, then calls ``process_before_every_sampling`` (in the hires pass once more before the
reset, so patches must be safe to apply twice). Each feature therefore puts its patch on a clone of that pass's
patcher, as Forge's own FreeU and MultiDiffusion do: FreeU as an output-block patch, Any-Size Diffusion's tiler as
the U-Net function wrapper (:mod:`.tiling`), the tiled VAE as the VAE patcher's decode/encode wrappers; FastComposer
wraps the model's text encoding for the generation (:mod:`.fastcomposer`). Nothing
is put on the shared U-Net; at the end each feature puts back the object it cloned (the next pass starts from
Forge's own objects anyway, but an img2img's init image is encoded before that reset).
"""

from __future__ import annotations

from backend import memory_management

from lib_freediff.asd.tiled_vae import tiled_decode, tiled_encode_moments
from lib_freediff.freeu.unet import FreeUBlockPatch
from lib_freediff.unet_info import model_channels
from lib_freediff.webui.forge.controlnet import ForgeControlNetTiles
from lib_freediff.webui.forge.clones import KeptOnClone, Placed
from lib_freediff.webui.forge.tiling import ForgeTiler
from lib_freediff.webui.host import HostAdapter

NAME = "Forge"
PEER_TILERS = {"MultiDiffusion Integrated": 0}


def _output_block_patches(unet) -> list:
    return unet.model_options.get("transformer_options", {}).get("patches", {}).get("output_block_patch", [])


class ForgeFreeU:
    """FreeU as an output-block patch on a clone of each pass's U-Net patcher."""

    def __init__(self, factors, tiles=None):
        self.factors, self.tiles = factors, tiles
        self.patch: FreeUBlockPatch | None = None
        self.placed: list[Placed] = []

    def attach(self, p) -> None:
        objects = p.sd_model.forge_objects
        unet = objects.unet
        if self.patch is None:
            diffusion_model = unet.model.diffusion_model
            base = getattr(diffusion_model, "config", {}).get("model_channels") or model_channels(diffusion_model)
            self.patch = FreeUBlockPatch(self.factors, base, self.tiles)
        if self._carries(unet):
            return  # the hires pass's call before Forge's reset: already on
        clone = unet.clone()
        clone.set_model_output_block_patch(self.patch)
        self.placed.append(Placed(objects, "unet", unet, clone, self._carries))

    def _carries(self, unet) -> bool:
        return any(patch is self.patch for patch in _output_block_patches(unet))

    @property
    def active(self) -> bool:
        return self.patch is not None and self.patch.active

    def set_active(self, on: bool) -> None:
        if self.patch is not None:
            self.patch.active = on

    def close(self) -> None:
        for placed in reversed(self.placed):
            placed.restore()
        self.placed.clear()
        self.set_active(False)  # a patcher kept elsewhere samples without FreeU from now on


class ForgeTiledVAE:
    """The VAE patcher's decode/encode wrappers on a clone of the pass's VAE: our tiled VAE above the threshold."""

    def __init__(self, p, tiles):
        self.tiles = tiles
        self.decode, self.encode = KeptOnClone(self._decode), KeptOnClone(self._encode)
        self.placed: list[Placed] = []
        self.before_sampling(p)  # img2img encodes its init images before the first pass

    def before_sampling(self, p) -> None:
        objects = p.sd_model.forge_objects
        vae = objects.vae
        if self._carries(vae):
            return
        clone = vae.clone()
        clone.patcher.set_model_vae_decode_wrapper(self.decode)
        clone.patcher.set_model_vae_encode_wrapper(self.encode)
        self.placed.append(Placed(objects, "vae", vae, clone, self._carries))

    def _carries(self, vae) -> bool:
        return vae.patcher.model_options.get("model_vae_decode_wrapper") is self.decode

    def _decode(self, decode_inner, samples):
        """``samples`` as Forge's VAE decodes them (scaled latents, channels first); pixels in [0, 1], channels last."""
        if not self.tiles(samples.shape[-2] * 8, samples.shape[-1] * 8):
            return decode_inner(samples)
        vae = decode_inner.__self__  # the VAE object decoding now
        memory_management.load_model_gpu(vae.patcher)
        pixels = tiled_decode(vae.first_stage_model, samples.to(device=vae.device, dtype=vae.vae_dtype))
        return ((pixels.float() + 1.0) / 2.0).clamp(0.0, 1.0).to(vae.output_device).movedim(1, -1)

    def _encode(self, encode_inner, pixel_samples):
        """``pixel_samples`` in [0, 1], channels last; the latent as Forge's VAE gives it."""
        if not self.tiles(pixel_samples.shape[1], pixel_samples.shape[2]):
            return encode_inner(pixel_samples)
        from backend.nn.vae import DiagonalGaussianDistribution

        vae = encode_inner.__self__
        memory_management.load_model_gpu(vae.patcher)
        x = (2.0 * pixel_samples.movedim(-1, 1) - 1.0).to(device=vae.device, dtype=vae.vae_dtype)
        posterior = DiagonalGaussianDistribution(tiled_encode_moments(vae.first_stage_model, x))
        regulation = vae.patcher.model_options.get("model_vae_regulation")
        latent = regulation(posterior) if regulation is not None else posterior.sample()
        return latent.to(vae.output_device).float()

    def close(self) -> None:
        for placed in reversed(self.placed):
            placed.restore()
        self.placed.clear()


class ForgeHost(HostAdapter):
    name = NAME
    peer_tilers = PEER_TILERS
    FreeU, Tiler, TiledVAE = ForgeFreeU, ForgeTiler, ForgeTiledVAE

    @staticmethod
    def unet(sd_model):
        patcher = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
        return getattr(getattr(patcher, "model", None), "diffusion_model", None)

    @staticmethod
    def family(sd_model) -> str | None:
        for attr, family in (("is_sdxl", "sdxl"), ("is_sd2", "sd2"), ("is_sd1", "sd1"), ("is_sd3", "sd3")):
            if getattr(sd_model, attr, False):
                return family
        name = type(sd_model).__name__.lower()
        return next((f for f in ("flux", "chroma") if f in name), None)

    @staticmethod
    def upcoming_checkpoint(p):
        """The checkpoint Forge loads after ``before_process``: an API request's override, else the one chosen in the
        UI (Forge loads it at the next generation, not when it is chosen)."""
        from modules import sd_models

        override = (getattr(p, "override_settings", None) or {}).get("sd_model_checkpoint")
        chosen = (getattr(sd_models.model_data, "forge_loading_parameters", None) or {}).get("checkpoint_info")
        return sd_models.checkpoint_aliases.get(override) or chosen

    def refusal(self, feature: str, sd_model, family: str | None) -> str | None:
        """Why ``feature`` cannot act on a checkpoint of ``family`` (None: it can)."""
        if family not in ("sd1", "sd2", "sdxl"):
            kind = family or (type(sd_model).__name__ if sd_model is not None else "no model")
            return (f"it works on Stable Diffusion U-Nets (SD1.x, SD2.x, SDXL), and the checkpoint is {kind} "
                    "(Flux, SD3 and other transformer models have no U-Net)")
        return None

    def text_encoders(self, sd_model) -> list:
        """As Forge runs them: its text engines call each CLIP encoder's ``transformer``."""
        clip = getattr(getattr(getattr(sd_model, "forge_objects", None), "clip", None), "cond_stage_model", None)
        return [getattr(encoder, "transformer", encoder) for encoder in (clip.children() if clip is not None else ())]

    def prepare_hires(self, p, turned_on: bool) -> None:
        """Forge's hires fix has fields of its own: its CFG (``hr_cfg``, 1.0 by default in the API: the hires pass
        would drop the negative prompt) and the modules to load for it (None breaks the pass). When we turn the hires
        fix on, the pass takes the first pass's CFG and modules, as a hires fix the user left alone."""
        if turned_on:
            p.hr_cfg = p.cfg_scale
            p.hr_distilled_cfg = getattr(p, "distilled_cfg_scale", getattr(p, "hr_distilled_cfg", 3.5))
        if getattr(p, "hr_additional_modules", None) is None:
            p.hr_additional_modules = ["Use same choices"]

    def controlnet_tiles(self, p, feature: str):
        return ForgeControlNetTiles.of(p, feature)

    @staticmethod
    def fastcomposer_text(sd_model):
        """FastComposer's wrapper on the prompt path of ``sd_model`` (refuses a text processing it cannot follow)."""
        from lib_freediff.webui.forge.fastcomposer import ForgePromptHooks

        return ForgePromptHooks(sd_model)

    @staticmethod
    def device():
        return memory_management.get_torch_device()
