"""Half precision against float32 on one device, same inputs and weights: FreeU, FSTD tiling, tiled VAE, FastComposer.

Bounds are k·u (u: the half type's unit roundoff). k comes from two CPU runs of these checks: the dry run (bf16)
and one with the full-size SD1.5 U-Net, SD VAE and ViT-L/14 in fp16 and bf16 (CPU autocast; 2026-12-06). In units
of u the largest errors seen were: filter and backbone 0.7, U-Net 4.6, FreeU's effect 26, blend 0.6, tile batch 3.6,
VAE 7.7, image encoder 3.3, fuse 1.0, DDIM run 2.7, stand-in generation 22. Each k is 3 to 16 times that (most
about 10), so that a check fails on a defect (NaN, overflow, a step that loses precision, tiles blended wrongly),
not on rounding.
"""

from __future__ import annotations

import copy

import torch

from common import Run, precision, requires, unet_inputs

# k per check (see the module docstring)
K_ELEMENTWISE = 8  # FreeU's filter and backbone scaling: a few roundings of each element
K_UNET = 40  # a U-Net forward (tens of layers, each rounding its output)
K_FREEU_EFFECT = 80  # FreeU's change to the U-Net output: a difference of two half outputs, smaller than either
K_BLEND = 8  # tiles of a pointwise model blended against the untiled output (weights and carried values rounded)
K_BATCH = 40  # the same tiles in calls of 4 against calls of 1: other kernels, so every layer rounds differently
K_VAE = 40  # a VAE decode or encode
K_ENCODER = 40  # CLIP ViT image encoder
K_FUSE = 16  # post-fuse MLP (two LayerNorm'd MLPs)
K_SAMPLING = 40  # a short DDIM run: the U-Net's error carried through the steps


def freeu(run: Run):
    from lib_freediff.freeu.ops import fourier_filter, scale_backbone_
    from lib_freediff.freeu.params import FAMILY_VALUES
    from lib_freediff.freeu.unet import FreeUFactors, FreeUPatch, find_stages

    p, rep, dev = run.profile, run.report, run.profile.device
    g = torch.Generator().manual_seed(1)
    # a power-of-two size and an odd one (the 125×75 latent of 1000×600 px): half FFTs exist for the first only
    for shape in ((2, 640, 32, 32), (2, 320, 75, 125)):
        x = torch.randn(shape, generator=g).to(dev)
        size = "×".join(map(str, shape))
        ref_filter, ref_scale = fourier_filter(x, 1, 0.9), scale_backbone_(x.clone(), 1.5, 2)
        for dtype in p.half_dtypes:
            rep.compare("FreeU", "freeu.filter", f"spectral filter (s = 0.9), {size}", fourier_filter(x.to(dtype), 1, 0.9),
                        ref_filter, dtype, K_ELEMENTWISE)
            rep.compare("FreeU", "freeu.backbone", f"v2 backbone scaling (b = 1.5), {size}",
                        scale_backbone_(x.to(dtype), 1.5, 2), ref_scale, dtype, K_ELEMENTWISE)

    for spec in p.unets:
        factors = FreeUFactors(2, **FAMILY_VALUES[spec.freeu_preset])
        found = {1: [], 2: []}
        for stage in find_stages(run.models.unet(spec, torch.float32)):
            found[stage.stage].append(stage.block_index)
        rep.expect("FreeU", "freeu.stages", f"{spec.name}: output blocks FreeU acts on",
                   (tuple(found[1]), tuple(found[2])) == spec.stage_blocks,
                   f"stage 1: {found[1]}, stage 2: {found[2]}", f"{list(spec.stage_blocks[0])}, {list(spec.stage_blocks[1])}")

        def forward(unet, dtype, patch_factors=None, active=True):
            inputs = unet_inputs(spec, p.check_latent, p.check_batch, dev, dtype)
            patch = FreeUPatch(unet, patch_factors) if patch_factors is not None else None
            if patch is not None:
                patch.active = active
                patch.attach()
            try:
                with precision(dev, dtype):
                    return unet(**inputs).float()
            finally:
                if patch is not None:
                    patch.remove()

        where = f"{spec.name}, {p.check_latent}² latent, batch {p.check_batch}"
        ref_plain = forward(run.models.unet(spec, torch.float32), torch.float32)
        ref_freeu = forward(run.models.unet(spec, torch.float32), torch.float32, factors)
        for dtype in p.half_dtypes:
            unet = run.models.unet(spec, dtype)
            plain, with_freeu = forward(unet, dtype), forward(unet, dtype, factors)
            rep.compare("FreeU", "freeu.unet", f"U-Net with FreeU v2 ({spec.freeu_preset} preset), {where}",
                        with_freeu, ref_freeu, dtype, K_UNET)
            rep.compare("FreeU", "freeu.effect", f"FreeU's change to the U-Net output, {where}",
                        with_freeu - plain, ref_freeu - ref_plain, dtype, K_FREEU_EFFECT)
            # gated off (outside its step window) and neutral factors: FreeU must leave the forward untouched
            rep.identical("FreeU", "freeu.gate", f"patch inactive (outside its steps), {where}",
                          forward(unet, dtype, factors, active=False), plain, dtype)
            rep.identical("FreeU", "freeu.neutral", f"b = s = 1, {where}",
                          forward(unet, dtype, FreeUFactors(2, 1.0, 1.0, 1.0, 1.0)), plain, dtype)


def _tiled_steps(apply_model, alphas, x, t, cond, profile, dtype, tile_batch, steps=4):
    """FSTD's outputs for steps 0 … steps−1 (step 0: the covering grid, then shifted grids that carry cells)."""
    from lib_freediff.asd.fstd import TiledDenoiser

    den = TiledDenoiser(apply_model, mode="implicit", tile=profile.tile, offset_range=profile.offset_range,
                        tile_batch=tile_batch, seed=3, prediction="eps", alphas_cumprod=alphas)
    outs = []
    with precision(profile.device, dtype):
        for i in range(steps):
            den.set_step(i)
            outs.append(den(x, t, cond=cond).float())
    return torch.stack(outs)


def fstd(run: Run):
    from tiny_sd import PointwiseUNet, UNetAsLDM, to_webui_precision

    p, rep, dev = run.profile, run.report, run.profile.device
    spec = p.unets[0]
    size = p.fstd_check_latent
    where = f"{size}² latent, tile {p.tile}, 4 steps"

    # a pointwise model: tiled must equal untiled, so any difference is the blending and carrying. Its latents and
    # timesteps are given in half, so that its output, and with it the blending, is half (the WebUI's ldm U-Net
    # returns its float32 input's dtype and blends in float32)
    with torch.device(dev):
        pointwise = UNetAsLDM(PointwiseUNet(context_dim=spec.context_dim))
    for dtype in p.half_dtypes:
        model = to_webui_precision(copy.deepcopy(pointwise), dev, dtype)
        inputs = unet_inputs(spec, size, p.check_batch, dev, dtype)
        x, t, cond = inputs["x"].to(dtype), inputs["timesteps"].to(dtype), {"c_crossattn": [inputs["context"]]}
        tiled = _tiled_steps(model.apply_model, model.alphas_cumprod, x, t, cond, p, dtype, 4)
        with precision(dev, dtype):
            untiled = model.apply_model(x, t, cond)
        if untiled.dtype != dtype:
            raise AssertionError(f"the pointwise model returned {untiled.dtype}: the blending would not run in {dtype}")
        rep.compare("FSTD tiling", "fstd.blend", f"pointwise model in half, tiled vs untiled, {where}",
                    tiled, untiled.float().expand_as(tiled), dtype, K_BLEND)

    def real(dtype, tile_batch):
        model = UNetAsLDM(run.models.unet(spec, dtype)).to(dev)
        inputs = unet_inputs(spec, size, p.check_batch, dev, dtype)
        cond = {"c_crossattn": [inputs["context"]]}
        return _tiled_steps(model.apply_model, model.alphas_cumprod, inputs["x"], inputs["timesteps"], cond, p, dtype,
                            tile_batch)

    ref = real(torch.float32, 4)
    for dtype in p.half_dtypes:
        by4 = real(dtype, 4)
        rep.compare("FSTD tiling", "fstd.unet", f"{spec.name} U-Net tiled, {where}", by4, ref, dtype, K_UNET)
        rep.compare("FSTD tiling", "fstd.batch", f"{spec.name} tiles 4 a call vs 1 a call, {where}", by4, real(dtype, 1),
                    dtype, K_BATCH)


def tiled_vae(run: Run):
    from lib_freediff.asd.tiled_vae import tiled_decode, tiled_encode

    p, rep, dev = run.profile, run.report, run.profile.device
    size, tile = p.vae_check_latent, p.vae_check_tile
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 4, size, size, generator=g).to(dev)
    image = (torch.rand(1, 3, 8 * size, 8 * size, generator=g) * 2 - 1).to(dev)
    vae32 = run.models.vae(torch.float32)
    with torch.inference_mode():
        ref_decoded, ref_encoded = vae32.decode(z), vae32.encode(image).mode()
    for dtype in p.half_dtypes:
        vae = run.models.vae(dtype)
        with torch.inference_mode():
            decoded = tiled_decode(vae, z, tile_latent=tile)
            untiled = vae.decode(z.to(dtype))
            encoded = tiled_encode(vae, image, tile_px=8 * tile).mode()
        rep.compare("tiled VAE", "vae.decode", f"tiled decode, {size}² latent in tiles of {tile}", decoded, ref_decoded,
                    dtype, K_VAE)
        rep.compare("tiled VAE", "vae.encode", f"tiled encode, {8 * size}² px in tiles of {8 * tile}", encoded, ref_encoded,
                    dtype, K_VAE)
        rep.compare("tiled VAE", "vae.tiles", f"tiled vs untiled decode, both half, {size}² latent", decoded, untiled,
                    dtype, K_VAE)


def fastcomposer_model(full: bool) -> torch.nn.Module:
    """FastComposer's image encoder and post-fuse MLP, random weights: ViT-L/14 and width 768, or the tests' tiny sizes."""
    from lib_freediff.fastcomposer.model import FastComposerModel, vision_config

    if full:
        return FastComposerModel.from_config(vision_config(), 768)
    from tests.fastcomposer.fixtures import EMBED_DIM, tiny_vision_config

    return FastComposerModel.from_config(tiny_vision_config(), EMBED_DIM)


def _ddim(unet, x, context_at, dtype, device, steps):
    """A DDIM run (eta 0) over ``steps`` timesteps; ``context_at(i)`` is step i's conditioning. Returns every step's x."""
    from tiny_sd import sd_alphas_cumprod

    alphas = sd_alphas_cumprod()
    ts = torch.linspace(999, 0, steps).round().long().tolist()
    out = []
    with precision(device, dtype):
        for i, t in enumerate(ts):
            a, a_next = alphas[t].item(), (alphas[ts[i + 1]].item() if i + 1 < steps else 1.0)
            eps = unet(x, torch.full((x.shape[0],), t, device=device), context=context_at(i)).float()
            x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
            x = a_next ** 0.5 * x0 + (1 - a_next) ** 0.5 * eps
            out.append(x)
    return out


def fastcomposer(run: Run):
    requires("transformers")
    from lib_freediff.fastcomposer.conditioning import delayed_switch_step, use_augmented

    p, rep, dev = run.profile, run.report, run.profile.device
    spec = p.unets[0]  # SD1.5, whose context width the model's is
    with torch.device(dev):
        model32 = fastcomposer_model(p.fastcomposer_full)
    width = model32.embed_dim
    g = torch.Generator().manual_seed(4)
    pixels = torch.randn(2, 3, model32.image_size, model32.image_size, generator=g).to(dev)
    text = torch.randn(1, 77, width, generator=g).to(dev)
    positions = [[5, 9]]
    with torch.inference_mode():
        subjects32 = model32.encode_subjects(pixels)
        fused32 = model32.fuse(text, subjects32, positions)
    alpha, steps = 0.7, 4 if p.dry_run else 10
    switch = delayed_switch_step(alpha, steps)
    noise = torch.randn(1, 4, p.check_latent, p.check_latent, generator=g).to(dev)
    ref = _ddim(run.models.unet(spec, torch.float32), noise, lambda i: fused32 if use_augmented(i, alpha, steps) else text,
                torch.float32, dev, steps)
    for dtype in p.half_dtypes:
        model = copy.deepcopy(model32).to(dtype)  # the WebUI loads FastComposer in its dtype
        text_h = text.to(dtype)
        with torch.inference_mode():
            subjects = model.encode_subjects(pixels)
            fused = model.fuse(text_h, subjects.float(), positions)
        encoder = "ViT-L/14" if p.fastcomposer_full else "tiny ViT"
        rep.compare("FastComposer", "fc.encode", f"image encoder ({encoder}), 2 images", subjects, subjects32, dtype, K_ENCODER)
        rep.compare("FastComposer", "fc.fuse", f"post-fuse MLP at the 2 marked tokens (width {width})",
                    fused[0, positions[0]], fused32[0, positions[0]], dtype, K_FUSE)
        others = torch.ones(77, dtype=torch.bool, device=dev)
        others[positions[0]] = False
        rep.identical("FastComposer", "fc.others", "every other token unchanged", fused[0, others], text_h[0, others], dtype)

        unet = run.models.unet(spec, dtype)
        run_fused = _ddim(unet, noise, lambda i: fused if use_augmented(i, alpha, steps) else text_h, dtype, dev, steps)
        text_only = _ddim(unet, noise, lambda i: text_h, dtype, dev, steps)
        where = f"{spec.name}, α = {alpha}, {steps} DDIM steps, switch at step {switch}"
        rep.compare("FastComposer", "fc.sampling", f"delayed subject conditioning, {where}", run_fused[-1], ref[-1], dtype,
                    K_SAMPLING)
        rep.identical("FastComposer", "fc.before_switch", f"steps before the switch = the text-only run, {where}",
                      run_fused[switch - 1], text_only[switch - 1], dtype)
        rep.expect("FastComposer", "fc.at_switch", f"the switch step differs from the text-only run, {where}",
                   not torch.equal(run_fused[switch], text_only[switch]),
                   f"rel diff {(run_fused[switch] - text_only[switch]).norm() / text_only[switch].norm():.1e}", "> 0", dtype)
