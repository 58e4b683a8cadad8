"""Hosts on the ``ldm_patched`` backend (reForge, Forge Classic): every feature is refused there.

Their U-Net runs its blocks through ``forward_timestep_embed`` without calling them as modules, so FreeU's hooks
would never fire, and their sampling bypasses the wrappers the tiler uses: a feature would run as if it were off.
Each generation with a feature on is refused instead, with this reason, before any model work (the U-Net and the
text encoder are still called as modules, so the refusal's hooks do fire).
"""

from __future__ import annotations

from lib_freediff.webui.a1111 import A1111Host

NAME = "an ldm_patched WebUI (reForge / Forge Classic)"


class LdmPatchedHost(A1111Host):
    name = NAME
    peer_tilers: dict = {}

    def refusal(self, feature: str, sd_model, family: str | None) -> str | None:
        return ("this WebUI runs the U-Net through ldm_patched, which sd-webui-freediff does not support yet; it "
                "supports AUTOMATIC1111 v1.10.x and Forge (lllyasviel/stable-diffusion-webui-forge)")

    @staticmethod
    def unet(sd_model):
        patcher = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
        return A1111Host.unet(sd_model) or getattr(getattr(patcher, "model", None), "diffusion_model", None)
