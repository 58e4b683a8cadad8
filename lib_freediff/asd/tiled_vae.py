"""Tiled VAE encode/decode for large images, for ldm's ``AutoencoderKL`` (and any first-stage model with
the same ``encoder``/``decoder``/``quant_conv``/``post_quant_conv`` layout, e.g. sgm's SDXL VAE).

The encoder/decoder is run as a flat list of operations over padded tiles, all tiles in lock-step:

* every GroupNorm uses the mean/variance of the *whole* tensor: each tile's core (its share of a
  partition of the image, without padding) contributes its count/mean/M2, combined exactly (Chan's
  parallel variance, float64), then the normalisation is applied tile by tile;
* the mid-block self-attention is global: the cores are assembled into the full tensor at that
  (lowest) resolution, attention is computed over all positions (queries in chunks), and the tiles are
  cut again from the result;
* tiles are padded by the receptive field of the convolutions between two global points (computed from
  the module, see :func:`receptive_padding`), so the cores see exactly what the untiled network sees.

Hence the result equals the untiled one up to float rounding; a smaller ``pad`` trades exactness for
speed. Tile states between GroupNorms can be kept on ``store_device`` (e.g. ``"cpu"``) so that the
compute device holds one tile at a time plus the lowest-resolution tensor for attention.
Modules run in eval mode semantics (dropout is skipped); ``temb`` is not used by these VAEs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from lib_freediff.errors import ParamError

FEATURE = "Any-Size Diffusion"


def should_tile(h: int, w: int, threshold_px: int) -> bool:
    """True when an ``h × w`` image has more pixels than a ``threshold_px × threshold_px`` square."""
    for name, v in (("height", h), ("width", w), ("vae_tile_threshold", threshold_px)):
        if isinstance(v, bool) or not hasattr(v, "__index__") or int(v) <= 0:
            raise ParamError(FEATURE, name, f"expected a positive integer, got {v!r}")
    return int(h) * int(w) > int(threshold_px) ** 2


# -- operation list ------------------------------------------------------------------------------

@dataclass
class _Op:
    kind: str  # conv | gn | push | add | up | down | attn | tanh
    mod: Optional[torch.nn.Module] = None
    act: bool = False  # gn followed by swish


def _resblock_ops(rb) -> List[_Op]:
    shortcut = None
    if rb.in_channels != rb.out_channels:
        shortcut = rb.conv_shortcut if rb.use_conv_shortcut else rb.nin_shortcut
    return [
        _Op("push"),
        _Op("gn", rb.norm1, act=True), _Op("conv", rb.conv1),
        _Op("gn", rb.norm2, act=True), _Op("conv", rb.conv2),
        _Op("add", shortcut),
    ]


def _attn_ops(a) -> List[_Op]:
    if isinstance(a, torch.nn.Identity):
        return []
    if all(hasattr(a, n) for n in ("norm", "q", "k", "v", "proj_out")):
        return [_Op("attn", a)]
    raise ParamError(FEATURE, "first_stage_model", f"unsupported VAE attention block {type(a).__name__}")


def _encoder_ops(enc) -> List[_Op]:
    ops = [_Op("conv", enc.conv_in)]
    for i in range(enc.num_resolutions):
        for j in range(enc.num_res_blocks):
            ops += _resblock_ops(enc.down[i].block[j])
            if len(enc.down[i].attn) > 0:
                ops += _attn_ops(enc.down[i].attn[j])
        if i != enc.num_resolutions - 1:
            ops.append(_Op("down", enc.down[i].downsample))
    ops += _resblock_ops(enc.mid.block_1) + _attn_ops(enc.mid.attn_1) + _resblock_ops(enc.mid.block_2)
    ops += [_Op("gn", enc.norm_out, act=True), _Op("conv", enc.conv_out)]
    return ops


def _decoder_ops(dec) -> List[_Op]:
    ops = [_Op("conv", dec.conv_in)]
    ops += _resblock_ops(dec.mid.block_1) + _attn_ops(dec.mid.attn_1) + _resblock_ops(dec.mid.block_2)
    for i in reversed(range(dec.num_resolutions)):
        for j in range(dec.num_res_blocks + 1):
            ops += _resblock_ops(dec.up[i].block[j])
            if len(dec.up[i].attn) > 0:
                ops += _attn_ops(dec.up[i].attn[j])
        if i != 0:
            ops.append(_Op("up", dec.up[i].upsample))
    if getattr(dec, "give_pre_end", False):
        return ops
    ops += [_Op("gn", dec.norm_out, act=True), _Op("conv", dec.conv_out)]
    if getattr(dec, "tanh_out", False):
        ops.append(_Op("tanh"))
    return ops


def _k(conv) -> int:
    return conv.kernel_size[0] // 2 if conv is not None else 0


def _required_pad(ops: Sequence[_Op]) -> float:
    """Receptive radius (input px) accumulated between global points, maximised over the list."""
    s = 1.0  # input px per current px
    r, need, stack = 0.0, 0.0, []
    for op in ops:
        if op.kind == "conv":
            r += _k(op.mod) * s
        elif op.kind == "push":
            stack.append(r)
        elif op.kind == "add":
            r = max(r, stack.pop() + _k(op.mod) * s)
        elif op.kind == "down":
            r += s  # a stride-2 3x3 conv reads one px past its 2x2 block
            s *= 2
        elif op.kind == "up":
            s /= 2
            r += (_k(getattr(op.mod, "conv", None)) if op.mod.with_conv else 0) * s
        elif op.kind == "attn":
            need = max(need, r)
            r = 0.0  # tiles are cut again from the exact full tensor after attention
            stack = [0.0 for _ in stack]
    return max(need, r)


def receptive_padding(module, kind: str) -> int:
    """Tile padding (input px: image px for ``kind="encoder"``, latent px for ``"decoder"``) that makes
    tiled results exact for this encoder/decoder, rounded up to the tile alignment."""
    if kind == "encoder":
        r = _required_pad(_encoder_ops(module))
        a = 2 ** (module.num_resolutions - 1)
        return int(math.ceil(r / a)) * a
    if kind == "decoder":
        return int(math.ceil(_required_pad(_decoder_ops(module))))
    raise ValueError(kind)


# -- tiles ---------------------------------------------------------------------------------------

@dataclass
class _Tile:
    core: Tuple[int, int, int, int]  # y0, y1, x0, x1 (input px)
    box: Tuple[int, int, int, int]  # padded
    h: Optional[torch.Tensor] = None
    res: List[torch.Tensor] = field(default_factory=list)


def _splits(length: int, tile: int, align: int) -> List[int]:
    lu, tu = length // align, max(1, tile // align)
    n = max(1, -(-lu // tu))
    return [int(round(i * lu / n)) * align for i in range(n + 1)]


def _make_tiles(H: int, W: int, tile: int, pad: int, align: int) -> List[_Tile]:
    ys, xs = _splits(H, tile, align), _splits(W, tile, align)
    tiles = []
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            c = (ys[i], ys[i + 1], xs[j], xs[j + 1])
            b = (max(0, c[0] - pad), min(H, c[1] + pad), max(0, c[2] - pad), min(W, c[3] + pad))
            tiles.append(_Tile(c, b))
    return tiles


class _Runner:
    """Runs an op list over tiles in lock-step; coordinates scale by 2**level (level < 0: smaller)."""

    def __init__(self, ops, tiles, device, store, attn_chunk):
        self.ops, self.tiles, self.device, self.store = ops, tiles, device, store
        self.attn_chunk = attn_chunk
        self.level = 0
        self.stats = {}  # op index -> (mean, var) as (B, G) float64

    def c(self, v: int) -> int:
        return v << self.level if self.level >= 0 else v >> -self.level

    def core_rel(self, t: _Tile):
        y0, x0 = self.c(t.core[0]) - self.c(t.box[0]), self.c(t.core[2]) - self.c(t.box[2])
        return y0, y0 + self.c(t.core[1]) - self.c(t.core[0]), x0, x0 + self.c(t.core[3]) - self.c(t.core[2])

    def run_ops(self, h, res, ops_idx):
        for i in ops_idx:
            op = self.ops[i]
            k = op.kind
            if k == "conv":
                h = op.mod(h)
            elif k == "gn":
                h = self.apply_gn(i, op, h)
            elif k == "push":
                res.append(h)
            elif k == "add":
                r = res.pop()
                h = (op.mod(r) if op.mod is not None else r) + h
            elif k == "up":
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                if op.mod.with_conv:
                    h = op.mod.conv(h)
            elif k == "down":
                if op.mod.with_conv:
                    h = op.mod.conv(F.pad(h, (0, 1, 0, 1), mode="constant", value=0))
                else:
                    h = F.avg_pool2d(h, kernel_size=2, stride=2)
            elif k == "tanh":
                h = torch.tanh(h)
            else:
                raise AssertionError(k)
        return h

    def apply_gn(self, i, op, h):
        gn = op.mod
        mean, var = self.stats[i]
        B, C = h.shape[:2]
        G = gn.num_groups
        rstd = (var + gn.eps).rsqrt()  # (B, G) float64
        scale = rstd.repeat_interleave(C // G, dim=1)
        shift = -mean.repeat_interleave(C // G, dim=1) * scale
        if gn.weight is not None:
            w = gn.weight.double()[None]
            scale, shift = scale * w, shift * w + gn.bias.double()[None]
        scale = scale.to(torch.float32)[:, :, None, None]
        shift = shift.to(torch.float32)[:, :, None, None]
        y = torch.addcmul(shift, h.float(), scale)
        if op.act:
            y = F.silu(y)
        return y.to(h.dtype)

    def level_after(self, ops_idx):
        lv = self.level
        for i in ops_idx:
            if self.ops[i].kind == "up":
                lv += 1
            elif self.ops[i].kind == "down":
                lv -= 1
        return lv

    def tile_pass(self, ops_idx, gn_next: Optional[int], out: Optional[torch.Tensor]):
        """Runs ``ops_idx`` on every tile; accumulates stats for op ``gn_next``; writes cores to ``out``."""
        start_level = self.level
        end_level = self.level_after(ops_idx)
        acc = None
        for t in self.tiles:
            self.level = start_level
            h = t.h.to(self.device)
            res = [r.to(self.device) for r in t.res]
            h = self.run_ops(h, res, ops_idx)
            self.level = end_level
            y0, y1, x0, x1 = self.core_rel(t)
            core = h[:, :, y0:y1, x0:x1]
            if gn_next is not None:
                G = self.ops[gn_next].mod.num_groups
                v = core.float().reshape(core.shape[0], G, -1)
                n = v.shape[-1]
                m = v.mean(-1)
                m2 = ((v - m[..., None]) ** 2).sum(-1)
                acc = _chan(acc, (n, m.double(), m2.double()))
            if out is not None:
                oy, ox = self.c(t.core[0]), self.c(t.core[2])
                out[:, :, oy:oy + core.shape[2], ox:ox + core.shape[3]] = core
                t.h, t.res = None, []
            else:
                t.h = h.to(self.store)
                t.res = [r.to(self.store) for r in res]
        self.level = end_level
        if gn_next is not None:
            n, m, m2 = acc
            self.stats[gn_next] = (m, m2 / n)

    def assemble(self, H: int, W: int) -> torch.Tensor:
        t0 = self.tiles[0]
        full = torch.empty((t0.h.shape[0], t0.h.shape[1], self.c(H), self.c(W)), device=self.device,
                           dtype=t0.h.dtype)
        for t in self.tiles:
            y0, y1, x0, x1 = self.core_rel(t)
            full[:, :, self.c(t.core[0]):self.c(t.core[1]), self.c(t.core[2]):self.c(t.core[3])] = \
                t.h[:, :, y0:y1, x0:x1].to(self.device)
        return full

    def global_attn(self, a, x):
        B, C, H, W = x.shape
        hn = a.norm(x)
        q, k, v = (m(hn).reshape(B, 1, C, H * W).transpose(2, 3).contiguous() for m in (a.q, a.k, a.v))
        del hn
        n = H * W
        chunk = self.attn_chunk or max(256, (1 << 26) // max(1, n))
        out = torch.empty_like(q)
        for s in range(0, n, chunk):
            out[:, :, s:s + chunk] = F.scaled_dot_product_attention(q[:, :, s:s + chunk], k, v)
        out = out.transpose(2, 3).reshape(B, C, H, W)
        return x + a.proj_out(out)


def _chan(a, b):
    if a is None:
        return b
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    d = mb - ma
    return n, ma + d * (nb / n), m2a + m2b + d * d * (na * nb / n)


def _run_tiled(ops, x, H, W, tile, pad, align, store_device, attn_chunk, out_ch):
    device = x.device
    store = torch.device(store_device) if store_device is not None else device
    tiles = _make_tiles(H, W, tile, pad, align)
    for t in tiles:
        t.h = x[:, :, t.box[0]:t.box[1], t.box[2]:t.box[3]].to(store)
    run = _Runner(ops, tiles, device, store, attn_chunk)
    pending: List[int] = []
    for i, op in enumerate(ops):
        if op.kind == "gn":
            run.tile_pass(pending, i, None)
            pending = [i]
        elif op.kind == "attn":
            run.tile_pass(pending, None, None)
            pending = []
            full = run.global_attn(op.mod, run.assemble(H, W))
            for t in tiles:
                b = [run.c(v) for v in t.box]
                t.h = full[:, :, b[0]:b[1], b[2]:b[3]].to(store)
            del full
        else:
            pending.append(i)
    lv = run.level_after(pending)
    f = (lambda v: v << lv) if lv >= 0 else (lambda v: v >> -lv)
    out = torch.empty((x.shape[0], out_ch, f(H), f(W)), device=device, dtype=x.dtype)
    run.tile_pass(pending, None, out)
    return out


def _check_pos_int(v, name, minimum=1):
    if isinstance(v, bool) or not hasattr(v, "__index__") or int(v) < minimum:
        raise ParamError(FEATURE, name, f"expected an integer ≥ {minimum}, got {v!r}")
    return int(v)


def _module_param(m):
    p = next(m.parameters())
    return p.device, p.dtype


@torch.no_grad()
def tiled_decoder_forward(decoder, z: torch.Tensor, tile_latent: int = 128, pad_latent: Optional[int] = None,
                          *, store_device=None, attn_chunk: Optional[int] = None) -> torch.Tensor:
    """``decoder(z)`` computed in tiles of ``tile_latent`` latent px (``z`` after ``post_quant_conv``)."""
    tile_latent = _check_pos_int(tile_latent, "vae_tile_latent", 8)
    if z.ndim != 4:
        raise ParamError(FEATURE, "z", f"expected a (B, C, H, W) latent, got shape {tuple(z.shape)}")
    H, W = z.shape[-2:]
    pad = receptive_padding(decoder, "decoder") if pad_latent is None else _check_pos_int(pad_latent, "vae_pad_latent", 0)
    if H <= tile_latent and W <= tile_latent:
        return decoder(z)
    ops = _decoder_ops(decoder)
    out_ch = decoder.conv_out.out_channels if not getattr(decoder, "give_pre_end", False) else None
    if out_ch is None:
        raise ParamError(FEATURE, "first_stage_model", "decoders with give_pre_end are not supported")
    return _run_tiled(ops, z, H, W, tile_latent, pad, 1, store_device, attn_chunk, out_ch)


@torch.no_grad()
def tiled_encoder_forward(encoder, x: torch.Tensor, tile_px: int = 1024, pad_px: Optional[int] = None,
                          *, store_device=None, attn_chunk: Optional[int] = None) -> torch.Tensor:
    """``encoder(x)`` (the moments before ``quant_conv``) computed in tiles of about ``tile_px`` px."""
    align = 2 ** (encoder.num_resolutions - 1)
    tile_px = _check_pos_int(tile_px, "vae_tile_px", align)
    if x.ndim != 4:
        raise ParamError(FEATURE, "x", f"expected a (B, C, H, W) image, got shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if H % align or W % align:
        raise ParamError(FEATURE, "x", f"image sides must be multiples of {align}, got {W}x{H}")
    if tile_px % align:
        raise ParamError(FEATURE, "vae_tile_px", f"must be a multiple of {align}, got {tile_px}")
    if pad_px is None:
        pad = receptive_padding(encoder, "encoder")
    else:
        pad = _check_pos_int(pad_px, "vae_pad_px", 0)
        pad = -(-pad // align) * align
    if H <= tile_px and W <= tile_px:
        return encoder(x)
    return _run_tiled(_encoder_ops(encoder), x, H, W, tile_px, pad, align, store_device, attn_chunk,
                      encoder.conv_out.out_channels)


@torch.no_grad()
def tiled_decode(first_stage_model, z: torch.Tensor, tile_latent: int = 128, pad_latent: Optional[int] = None,
                 *, store_device=None, attn_chunk: Optional[int] = None) -> torch.Tensor:
    """Tiled ``first_stage_model.decode(z)``: ``z`` as ``decode`` takes it (already divided by the
    model's scale factor), returns the image in the decoder's range (about [-1, 1]).

    ``tile_latent``: core tile size in latent px; ``pad_latent``: context around each tile (default:
    the exact receptive padding, 15 for the SD VAE); ``store_device``: where tile states wait between
    GroupNorms (``"cpu"`` to keep the compute device's memory at one tile).
    """
    device, dtype = _module_param(first_stage_model.decoder)
    z = z.to(device=device, dtype=dtype)
    if getattr(first_stage_model, "post_quant_conv", None) is not None:
        z = first_stage_model.post_quant_conv(z)
    return tiled_decoder_forward(first_stage_model.decoder, z, tile_latent, pad_latent,
                                 store_device=store_device, attn_chunk=attn_chunk)


@torch.no_grad()
def tiled_encode_moments(first_stage_model, x: torch.Tensor, tile_px: int = 1024, pad_px: Optional[int] = None,
                         *, store_device=None, attn_chunk: Optional[int] = None) -> torch.Tensor:
    """The moments (mean and log-variance, after ``quant_conv``) of ``first_stage_model.encode(x)``, computed in
    tiles of about ``tile_px``, for an image ``x`` in [-1, 1] with sides multiples of 8. ``pad_px`` defaults to the
    exact receptive padding (88 px for the SD VAE)."""
    device, dtype = _module_param(first_stage_model.encoder)
    h = tiled_encoder_forward(first_stage_model.encoder, x.to(device=device, dtype=dtype), tile_px, pad_px,
                              store_device=store_device, attn_chunk=attn_chunk)
    quant_conv = getattr(first_stage_model, "quant_conv", None)
    return quant_conv(h) if quant_conv is not None else h


def tiled_encode(first_stage_model, x: torch.Tensor, tile_px: int = 1024, pad_px: Optional[int] = None,
                 *, store_device=None, attn_chunk: Optional[int] = None):
    """Tiled ``first_stage_model.encode(x)`` as ldm's ``AutoencoderKL`` returns it: a ``DiagonalGaussianDistribution``
    over :func:`tiled_encode_moments` (``.mode()``/``.mean`` for the mean, ``.sample()`` to draw as the WebUI's
    ``get_first_stage_encoding`` does); no sampling or scaling is done here."""
    from ldm.modules.distributions.distributions import DiagonalGaussianDistribution

    return DiagonalGaussianDistribution(tiled_encode_moments(first_stage_model, x, tile_px, pad_px,
                                                             store_device=store_device, attn_chunk=attn_chunk))
