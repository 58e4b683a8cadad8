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
