"""Any-Size Diffusion (Zheng et al., AAAI 2024) as plain torch code: ARAD aspect-ratio buckets and the
any-size plan (:mod:`.buckets`), FSTD tiled denoising (:mod:`.fstd`, its tile layouts in :mod:`.tiles`) and tiled VAE (:mod:`.tiled_vae`).

Nothing here imports the WebUI. The names below are re-exported lazily, so importing a light submodule
(``buckets``, ``params``) does not load torch.
"""

import importlib

_EXPORTS = {
    "buckets": ("PAPER_BUCKETS", "SDXL_BUCKETS", "AnyPlan", "Box", "Bucket", "Size", "bucket_set_for",
                "choose_bucket", "format_bucket_list", "parse_bucket_list", "plan_any_size", "scale_buckets"),
    "fstd": ("MODES", "CallInfo", "TiledDenoiser"),
    "tiles": ("AxisLayout", "GridPlan", "TileBox", "axis_layout", "axis_starts", "grid_plan", "tile_grid"),
    "tiled_vae": ("receptive_padding", "should_tile", "tiled_decode", "tiled_encode"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
