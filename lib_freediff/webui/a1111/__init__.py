"""AUTOMATIC1111 v1.10.x: where its U-Net, VAE and sampler wrappers are, and how the features attach to them.

FreeU: forward pre-hooks on the U-Net's output blocks, taken off after the generation. Any-Size Diffusion: the
tiler replaces the CFG denoiser's inner model (``model_wrap``) for the tiled pass, and the VAE's
``decode``/``encode`` are attributes of that one VAE object for the generation. ControlNet is Mikubill's
sd-webui-controlnet (:mod:`.controlnet`). FastComposer: forward hooks on the text encoder (:mod:`.fastcomposer`). A
refusal hooks the text encoder and the U-Net.
"""

from __future__ import annotations

from modules import shared

from lib_freediff.asd.tiled_vae import tiled_decode, tiled_encode
from lib_freediff.freeu.unet import FreeUPatch, remove_all_hooks
from lib_freediff.unet_info import model_family
from lib_freediff.webui.a1111.controlnet import ControlNetTiles, FirstPassControl, restore_after_failure
from lib_freediff.webui.host import HostAdapter

NAME = "AUTOMATIC1111"
# another extension that tiles the U-Net calls: title → the positional index of its 'enabled' argument
PEER_TILERS = {"Tiled Diffusion": 0}


class A1111FreeU:
    """FreeU's hooks on the loaded U-Net for one generation (re-attached when the checkpoint changes)."""

    def __init__(self, factors, tiles=None):
        self.factors, self.tiles = factors, tiles
        self.patch: FreeUPatch | None = None

    def attach(self, p) -> None:
        unet = A1111Host.unet(p.sd_model)
        if self.patch is not None and self.patch.unet is unet:
            return
        self.close()
        remove_all_hooks(unet)  # anything an earlier, crashed process left behind
        self.patch = FreeUPatch(unet, self.factors, tiles=self.tiles).attach()

    @property
    def active(self) -> bool:
        return self.patch is not None and self.patch.active

    def set_active(self, on: bool) -> None:
        if self.patch is not None:
            self.patch.active = on

    def close(self) -> None:
        if self.patch is not None:
            self.patch.remove()
            self.patch = None


class A1111Tiler:
    """The tiler in place of the CFG denoiser's inner model for one sampling pass."""

    def __init__(self, p, build, controlnet):
        self.build, self.controlnet = build, controlnet
        self.sampler = p.sampler
        self.cfg = None
        self.tiler = None
        self._wrap(p.sampler.model_wrap_cfg)

    def place(self, p) -> None:
        pass  # the sampler's denoiser keeps the tiler for the whole pass

    def _wrap(self, cfg) -> None:
        inner = cfg.inner_model
        # k-diffusion wrappers return x0; the WebUI's timestep samplers (DDIM, PLMS, UniPC) return eps
        prediction = "x0" if hasattr(inner, "sigma_to_t") else "eps"
        self.tiler = self.build(inner, prediction, getattr(shared.sd_model, "alphas_cumprod", None))
        self.tiler.tile_context = self.controlnet
        cfg.model_wrap = self.tiler
        self.cfg = (cfg, inner)

    def owns(self, denoiser) -> bool:
        return self.cfg is not None and denoiser is self.cfg[0]

    def set_step(self, denoiser, step: int, steps: int) -> None:
        if not self.owns(denoiser):
            return
        if denoiser.model_wrap is None:  # the WebUI rebuilt its inner model (refiner switch): wrap again
            self._wrap(denoiser)
        self.tiler.set_step(step, steps)

    def close(self) -> None:
        if self.cfg is not None:
            cfg, inner = self.cfg
            if cfg.model_wrap is self.tiler:
                cfg.model_wrap = inner
            self.cfg = None


class A1111TiledVAE:
    """``decode``/``encode`` of the loaded VAE replaced for the whole generation (first pass included)."""

    def __init__(self, p, tiles):
        vae = p.sd_model.first_stage_model
        self._restore = []
        original_decode, original_encode = vae.decode, vae.encode

        def decode(z, *args, **kwargs):
            if args or kwargs or not tiles(z.shape[-2] * 8, z.shape[-1] * 8):
                return original_decode(z, *args, **kwargs)
            return tiled_decode(vae, z)

        def encode(x, *args, **kwargs):
            if args or kwargs or not tiles(x.shape[-2], x.shape[-1]):
                return original_encode(x, *args, **kwargs)
            return tiled_encode(vae, x)

        # attributes of this one VAE object for this generation, removed in close()
        for name, fn in (("decode", decode), ("encode", encode)):
            self._restore.append((vae, name, vae.__dict__.get(name)))
            setattr(vae, name, fn)

    def before_sampling(self, p) -> None:
        pass

    def close(self) -> None:
        for obj, name, previous in reversed(self._restore):
            if previous is None:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, previous)
        self._restore.clear()


class A1111Host(HostAdapter):
    name = NAME
    peer_tilers = PEER_TILERS
    FreeU, Tiler, TiledVAE = A1111FreeU, A1111Tiler, A1111TiledVAE

    @staticmethod
    def unet(sd_model):
        return getattr(getattr(sd_model, "model", None), "diffusion_model", None)

    def family(self, sd_model) -> str | None:
        if getattr(sd_model, "is_sd3", False):
            return "sd3"
        unet = self.unet(sd_model)
        return model_family(unet) if unet is not None else None

    @staticmethod
    def upcoming_checkpoint(p):
        """The checkpoint an API request's ``override_settings`` loads after ``before_process`` (None: the loaded one)."""
        from modules import sd_models

        return sd_models.checkpoint_aliases.get((getattr(p, "override_settings", None) or {}).get("sd_model_checkpoint"))

    def refusal(self, feature: str, sd_model, family: str | None) -> str | None:
        """Why ``feature`` cannot act on a checkpoint of ``family`` (None: it can)."""
        if family not in (None, "sd1", "sd2", "sdxl") or (family is None and not hasattr(self.unet(sd_model), "output_blocks")):
            return f"it works on Stable Diffusion U-Nets (SD1.x, SD2.x, SDXL), and the checkpoint is {family or 'none of them'}"
        return None

    def text_encoders(self, sd_model) -> list:
        found = (getattr(sd_model, name, None) for name in ("cond_stage_model", "conditioner"))
        return [m for m in found if m is not None and hasattr(m, "register_forward_pre_hook")]

    def controlnet_tiles(self, p, feature: str):
        return ControlNetTiles.of(p, feature)

    @staticmethod
    def first_pass_control(p) -> FirstPassControl:
        """ControlNet's units kept on their first-pass control in a txt2img first pass (``restore()`` before the next)."""
        return FirstPassControl(p)

    @staticmethod
    def fastcomposer_text(sd_model):
        """FastComposer's hooks on the prompt path of ``sd_model`` (refuses a text encoder they cannot follow)."""
        from lib_freediff.webui.a1111.fastcomposer import A1111PromptHooks

        return A1111PromptHooks(sd_model)

    def after_failure(self, p) -> None:
        restore_after_failure(p)

    @staticmethod
    def device():
        return getattr(shared, "device", None)
