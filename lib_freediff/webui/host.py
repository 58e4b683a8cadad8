"""Which WebUI we run in, and its adapter.

The features' WebUI code (panels, API, infotext, sessions) is shared; what differs between hosts (where the
U-Net is, how FreeU and the tiler are put on it, the VAE, the host's ControlNet, what to hook to refuse a
generation) lives in one adapter per host: :mod:`lib_freediff.webui.a1111` for AUTOMATIC1111 v1.10.x and
:mod:`lib_freediff.webui.forge` for Forge (its ``backend`` since 2024-08). Hosts on the older ``ldm_patched``
backend (reForge, Forge Classic) run U-Net blocks without calling them as modules, so hooks would silently do
nothing there: :mod:`lib_freediff.webui.unsupported` refuses every feature on them instead.
"""

from __future__ import annotations

import importlib.util

A1111 = "A1111"
FORGE = "Forge"
LDM_PATCHED = "ldm_patched"

_adapter = None


class HostAdapter:
    """What differs between hosts; one subclass per host. The feature code calls only these."""

    name = ""
    # another extension's AlwaysOn script that tiles the U-Net calls: title → the index of its 'enabled' argument
    peer_tilers: dict = {}
    # one generation's FreeU (factors, tile statistics), one pass's tiler (p, build, controlnet), the tiled VAE (p, rule)
    FreeU = Tiler = TiledVAE = None

    @staticmethod
    def unet(sd_model):
        """The U-Net module of the model (None when it has none)."""
        raise NotImplementedError

    def family(self, sd_model) -> str | None:
        """"sd1", "sd2", "sdxl" (U-Nets), "sd3", "flux", … or None when it cannot tell."""
        raise NotImplementedError

    @staticmethod
    def upcoming_checkpoint(p):
        """The checkpoint that loads after ``before_process`` for generation ``p`` (None: the loaded one)."""
        raise NotImplementedError

    def refusal(self, feature: str, sd_model, family: str | None) -> str | None:
        """Why ``feature`` cannot act on a checkpoint of ``family`` here (None: it can)."""
        raise NotImplementedError

    def text_encoders(self, sd_model) -> list:
        """The text-encoder modules as the host calls them."""
        raise NotImplementedError

    def gated_modules(self, sd_model) -> list:
        """What a refusal hooks: the first model work of a generation runs one of these."""
        unet = self.unet(sd_model)
        return self.text_encoders(sd_model) + ([unet] if unet is not None else [])

    def freeu(self, factors, tiles=None):
        """FreeU with ``factors``; ``tiles``: the statistics its stages share inside a tiled pass."""
        return self.FreeU(factors, tiles)

    def tiler(self, p, build, controlnet):
        """The tiler of the pass now sampling: ``build(inner, prediction[, alphas_cumprod])`` makes it."""
        return self.Tiler(p, build, controlnet)

    def tiled_vae(self, p, tiles):
        """``tiles(height_px, width_px)``: whether an image of that size is decoded/encoded in tiles."""
        return self.TiledVAE(p, tiles)

    def prepare_hires(self, p, turned_on: bool) -> None:
        """Fields of the host's hires fix to set when Any-Size Diffusion turns it on (``turned_on``) or uses it."""

    def controlnet_tiles(self, p, feature: str):
        """The host's ControlNet units of generation ``p``, checked and cropped for the tiled pass (None: none)."""
        raise NotImplementedError

    def first_pass_control(self, p):
        """The host's ControlNet held to its first-pass control during a txt2img first pass (``restore()`` puts it
        back), or None where each pass gets its own anyway."""
        return None

    def fastcomposer_text(self, sd_model):
        """FastComposer's hooks on ``sd_model``'s prompt path for one generation: ``tokenizer()`` (a ``PromptTokenizer``),
        ``attach(session)``, ``close()``. Refuses (``ParamError`` on ``model``) a text encoder they cannot follow."""
        raise NotImplementedError

    def after_failure(self, p) -> None:
        """What other extensions leave attached when a generation we took part in raised."""

    @staticmethod
    def device():
        raise NotImplementedError


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def detect() -> str:
    """The host kind, from what the WebUI ships: Forge has ``backend`` and ``modules_forge``; reForge and Forge
    Classic have ``ldm_patched``; AUTOMATIC1111 has neither."""
    if _importable("modules_forge") and _importable("backend"):
        return FORGE
    if _importable("ldm_patched"):
        return LDM_PATCHED
    return A1111


def current():
    """The adapter of the host we run in (chosen once, at first use)."""
    global _adapter
    if _adapter is None:
        kind = detect()
        if kind == FORGE:
            from lib_freediff.webui.forge import ForgeHost as Adapter
        elif kind == LDM_PATCHED:
            from lib_freediff.webui.unsupported import LdmPatchedHost as Adapter
        else:
            from lib_freediff.webui.a1111 import A1111Host as Adapter
        _adapter = Adapter()
    return _adapter


UNET_FAMILIES = ("sd1", "sd2", "sdxl")


def upcoming_family(p) -> str | None:
    """The family of the checkpoint generation ``p`` will run. Before ``process``, an API request's
    ``override_settings`` checkpoint (and on Forge, a checkpoint chosen in the UI) is not loaded yet: its family is
    read from the file's header then; otherwise it is the loaded model's."""
    from lib_freediff.unet_info import checkpoint_family

    adapter = current()
    info = adapter.upcoming_checkpoint(p)
    loaded = getattr(getattr(p.sd_model, "sd_checkpoint_info", None), "filename", None)
    if info is None or getattr(info, "filename", None) in (None, loaded):
        return adapter.family(p.sd_model)
    return checkpoint_family(info.filename) or adapter.family(p.sd_model)
