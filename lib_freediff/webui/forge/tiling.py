"""Any-Size Diffusion's tiler as Forge's U-Net function wrapper.

Forge's sampling function calls ``model_options["model_function_wrapper"](apply_model, {"input", "timestep", "c",
"cond_or_uncond"})`` for each batch of row chunks (cond, uncond) it runs; ``apply_model`` returns the x0 prediction.
:class:`ForgeTiledUNet` hands that call to the core tiler (:class:`~lib_freediff.asd.fstd.TiledDenoiser`, x0 mode),
whose inner call runs ``apply_model`` on a batch of tiles. A batch of ``n`` tiles is ``n`` times the call's row
chunks, tile-major, so each tile call gets the transformer options of that layout (``cond_or_uncond`` repeated
``n`` times, its cond marks and indices): patches that read them (IP-Adapter, ControlNet's weighting) see the rows
they expect. ControlNet's control, which Forge computed for the whole latent, is computed again per tile call from
each unit's control cropped to the call's tiles (:class:`~lib_freediff.webui.forge.controlnet.ControlCrops`). A
wrapper that was already on the patcher is called per tile call in place of ``apply_model``.
"""

from __future__ import annotations

from contextlib import contextmanager

from backend.sampling.sampling_function import compute_cond_indices, compute_cond_mark

from lib_freediff.webui.forge.clones import KeptOnClone, Placed
from lib_freediff.webui.forge.controlnet import ControlCrops

# what the sampling function adds to a call's conditioning; made again for each tile call
PER_CALL = ("transformer_options", "control", "control_model")


class ForgeTiledUNet(KeptOnClone):
    """The tiled pass's ``model_function_wrapper``: each U-Net call of a step, tile by tile."""

    def __init__(self, previous=None):
        super().__init__(self._wrapped_call)
        self.previous = previous  # a wrapper another extension set before us, run per tile call
        self.tiler = None
        self.controls = ControlCrops()
        self._call = None
        self._tiles = None

    def _wrapped_call(self, apply_model, args):
        x, c = args["input"], args["c"]
        if self.tiler is None:  # the pass is over: a patcher kept elsewhere runs the U-Net untiled
            return self._run(apply_model, x, args["timestep"], c, list(args["cond_or_uncond"]))
        self._call = (apply_model, c, list(args["cond_or_uncond"]), x.shape[0])
        try:
            return self.tiler(x, args["timestep"], **{k: v for k, v in c.items() if k not in PER_CALL})
        finally:
            self._call = None

    @contextmanager
    def tiles(self, boxes, rows: int, height: int, width: int):
        """The tiler's ``tile_context``: which tiles the next inner call holds."""
        self._tiles = (boxes, height, width)
        try:
            yield
        finally:
            self._tiles = None

    def unet_call(self, x, timestep, **c):
        """The tiler's inner call: ``apply_model`` on a batch of tiles (or on the whole latent when one tile covers it)."""
        apply_model, whole, cond_or_uncond, rows = self._call
        if self._tiles is None:
            return self._run(apply_model, x, timestep, whole, cond_or_uncond)
        boxes, height, width = self._tiles
        chunks = self.tile_chunks(cond_or_uncond, x.shape[0] // rows)
        options = dict(whole.get("transformer_options") or {})
        if "sigmas" in options:
            options["cond_mark"] = compute_cond_mark(chunks, options["sigmas"])
            options["cond_indices"], options["uncond_indices"] = compute_cond_indices(chunks, options["sigmas"])
        options["cond_or_uncond"] = chunks
        c = {**c, "transformer_options": options}
        control = whole.get("control_model")
        if control is not None:
            c["control_model"] = control
            c["control"] = self.controls.control(control, x, timestep, c, len(chunks), boxes, height, width)
        return self._run(apply_model, x, timestep, c, chunks)

    @staticmethod
    def tile_chunks(cond_or_uncond: list, tiles: int) -> list:
        """The row chunks of a call over ``tiles`` tiles: each tile holds the whole call's chunks, tile-major."""
        return cond_or_uncond * tiles

    def _run(self, apply_model, x, timestep, c, cond_or_uncond):
        if self.previous is not None:
            return self.previous(apply_model, {"input": x, "timestep": timestep, "c": c, "cond_or_uncond": cond_or_uncond})
        return apply_model(x, timestep, **c)


class ForgeTiler:
    """The tiler of one sampling pass, put on a clone of the pass's U-Net patcher (again when Forge resets its objects
    within the pass), with the patcher's memory estimate made for a tile call."""

    def __init__(self, p, build, controlnet=None):
        self.sampler = getattr(p, "sampler", None)
        self.wrapper = ForgeTiledUNet()
        self.tiler = build(self.wrapper.unet_call, "x0")
        self.tiler.tile_context = self.wrapper.tiles
        self.wrapper.tiler = self.tiler
        self.placed: list[Placed] = []
        self.place(p)

    def place(self, p) -> None:
        objects = p.sd_model.forge_objects
        unet = objects.unet
        if self._carries(unet):
            return
        self.wrapper.previous = unet.model_options.get("model_function_wrapper")
        clone = unet.clone()
        clone.set_model_unet_function_wrapper(self.wrapper)
        clone.set_memory_peak_estimation_modifier(self._tile_call_memory(unet))
        self.placed.append(Placed(objects, "unet", unet, clone, self._carries))

    def _carries(self, unet) -> bool:
        return unet.model_options.get("model_function_wrapper") is self.wrapper

    def _tile_call_memory(self, unet):
        """Forge loads the U-Net with room for a whole-latent call; a tile call needs less (more room for weights)."""
        whole = unet.model_options.get("memory_peak_estimation_modifier", unet.memory_required)
        tiler = self.tiler

        def estimate(shape):
            rows, channels, height, width = shape
            return whole([rows * tiler.tile_batch, channels, min(height, tiler.tile), min(width, tiler.tile)])

        return KeptOnClone(estimate)

    def set_step(self, denoiser, step: int, steps: int) -> None:
        if self.sampler is None or denoiser is getattr(self.sampler, "model_wrap_cfg", None):
            self.tiler.set_step(step, steps)

    def close(self) -> None:
        for placed in reversed(self.placed):
            placed.restore()
        self.placed.clear()
        self.wrapper.tiler = None
        self.tiler.reset()
