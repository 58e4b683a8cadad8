"""FastComposer's SD1.5 parts (diffusers / transformers layouts) → a WebUI (ldm) SD1.5 checkpoint.

The release's ``unet.*`` is FastComposer's own fine-tuned U-Net (the subject-augmented conditioning
only works with it); ``text_encoder.*`` and ``vae.*`` are SD1.5's. ``write_webui_checkpoint`` writes
all three under the keys the WebUI's SD1.5 model (``v1-inference.yaml``) loads:

    unet.*          → model.diffusion_model.*                      (ldm UNetModel)
    text_encoder.*  → cond_stage_model.transformer.text_model.*    (transformers CLIPTextModel)
    vae.*           → first_stage_model.*                          (ldm AutoencoderKL)

Every source key of those groups is mapped or the conversion fails listing the keys it could not map.
``image_encoder.*``/``postfuse_module.*`` stay in the FastComposer file (``loader.py`` reads them).
"""

from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..errors import ModelFileError
from .loader import CheckpointReader, _file_key, _list_keys, write_safetensors_atomic

UNET_OUT = "model.diffusion_model."
TEXT_OUT = "cond_stage_model.transformer.text_model."
VAE_OUT = "first_stage_model."


class UnmappedKeysError(ValueError):
    def __init__(self, what: str, keys: Sequence[str]):
        self.keys = list(keys)
        super().__init__(f"{what}: cannot map {len(self.keys)} key(s): {_list_keys(self.keys, 12)}")


# ----------------------------------------------------------------------------------------------------
# U-Net
# ----------------------------------------------------------------------------------------------------

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_PARAM = r"(weight|bias)"
_RE_RESNET_REST = re.compile(rf"^(norm1|conv1|time_emb_proj|norm2|conv2|conv_shortcut)\.{_PARAM}$")
_RE_ATTN_REST = re.compile(
    rf"^(?:(norm|proj_in|proj_out)\.{_PARAM}"
    rf"|transformer_blocks\.\d+\.(?:attn[12]\.(?:to_q|to_k|to_v)\.weight"
    rf"|attn[12]\.to_out\.0\.{_PARAM}|ff\.net\.0\.proj\.{_PARAM}|ff\.net\.2\.{_PARAM}|norm[123]\.{_PARAM}))$")


def _unet_layout(keys: Iterable[str]):
    """Number of resnets per down block and which up blocks have attentions."""
    keys = list(keys)
    down_res = {}
    up_attn = set()
    for k in keys:
        m = re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.", k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            down_res[i] = max(down_res.get(i, -1), j)
        m = re.match(r"up_blocks\.(\d+)\.attentions\.", k)
        if m:
            up_attn.add(int(m.group(1)))
    nrb = {v + 1 for v in down_res.values()}
    if len(nrb) != 1:
        raise UnmappedKeysError("unet (cannot tell the number of res blocks per level)",
                                [k for k in keys if k.startswith("down_blocks.")] or ["down_blocks.*"])
    return nrb.pop(), up_attn


def unet_key_map(keys: Iterable[str]) -> Tuple[Dict[str, str], List[str]]:
    """diffusers UNet2DConditionModel keys (no prefix) → ldm UNetModel keys (no prefix).
    Returns (mapping, unmapped)."""
    keys = list(keys)
    nrb, up_attn = _unet_layout(keys)
    per = nrb + 1
    out, bad = {}, []

    def resnet(rest):
        m = _RE_RESNET_REST.match(rest)
        return None if not m else _RESNET[m.group(1)] + "." + m.group(2)

    def attn(rest):
        return rest if _RE_ATTN_REST.match(rest) else None

    for k in keys:
        t = None
        if m := re.fullmatch(rf"conv_in\.{_PARAM}", k):
            t = f"input_blocks.0.0.{m.group(1)}"
        elif m := re.fullmatch(rf"time_embedding\.linear_([12])\.{_PARAM}", k):
            t = f"time_embed.{0 if m.group(1) == '1' else 2}.{m.group(2)}"
        elif m := re.fullmatch(rf"conv_norm_out\.{_PARAM}", k):
            t = f"out.0.{m.group(1)}"
        elif m := re.fullmatch(rf"conv_out\.{_PARAM}", k):
            t = f"out.2.{m.group(1)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
            i, j, r = int(m.group(1)), int(m.group(2)), resnet(m.group(3))
            if r and j < nrb:
                t = f"input_blocks.{1 + i * per + j}.0.{r}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", k):
            i, j, r = int(m.group(1)), int(m.group(2)), attn(m.group(3))
            if r and j < nrb:
                t = f"input_blocks.{1 + i * per + j}.1.{r}"
        elif m := re.fullmatch(rf"down_blocks\.(\d+)\.downsamplers\.0\.conv\.{_PARAM}", k):
            i = int(m.group(1))
            t = f"input_blocks.{(i + 1) * per}.0.op.{m.group(2)}"
        elif m := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", k):
            r = resnet(m.group(2))
            if r:
                t = f"middle_block.{0 if m.group(1) == '0' else 2}.{r}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", k):
            r = attn(m.group(1))
            if r:
                t = f"middle_block.1.{r}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
            i, j, r = int(m.group(1)), int(m.group(2)), resnet(m.group(3))
            if r and j <= nrb:
                t = f"output_blocks.{i * per + j}.0.{r}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", k):
            i, j, r = int(m.group(1)), int(m.group(2)), attn(m.group(3))
            if r and j <= nrb:
                t = f"output_blocks.{i * per + j}.1.{r}"
        elif m := re.fullmatch(rf"up_blocks\.(\d+)\.upsamplers\.0\.conv\.{_PARAM}", k):
            i = int(m.group(1))
            t = f"output_blocks.{i * per + nrb}.{2 if i in up_attn else 1}.conv.{m.group(2)}"
        if t is None:
            bad.append(k)
        else:
            out[k] = t
    return out, bad


def _unet_tensor(src_key: str, t: torch.Tensor, linear_proj: bool = False) -> torch.Tensor:
    """SD1.5 ldm uses 1x1 convolutions for proj_in/proj_out; diffusers may store them as linear."""
    if re.search(r"\.proj_(in|out)\.weight$", src_key):
        if linear_proj and t.ndim == 4:
            return t[:, :, 0, 0]
        if not linear_proj and t.ndim == 2:
            return t[:, :, None, None]
    return t


def convert_unet_state_dict(sd: Mapping[str, torch.Tensor], *, prefix: str = "", out_prefix: str = "",
                            linear_proj: bool = False) -> Dict[str, torch.Tensor]:
    """diffusers U-Net state dict (keys under ``prefix``) → ldm keys under ``out_prefix``.
    Raises ``UnmappedKeysError`` if any key under ``prefix`` cannot be mapped."""
    src = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    kmap, bad = unet_key_map(src)
    if bad:
        raise UnmappedKeysError("unet", [prefix + k for k in bad])
    return {out_prefix + kmap[k]: _unet_tensor(k, v, linear_proj) for k, v in src.items()}


# ----------------------------------------------------------------------------------------------------
# Text encoder
# ----------------------------------------------------------------------------------------------------

_RE_TEXT = re.compile(
    rf"^(?:embeddings\.(?:token_embedding|position_embedding)\.weight|embeddings\.position_ids"
    rf"|encoder\.layers\.\d+\.(?:self_attn\.(?:q_proj|k_proj|v_proj|out_proj)\.{_PARAM}"
    rf"|layer_norm[12]\.{_PARAM}|mlp\.fc[12]\.{_PARAM})"
    rf"|final_layer_norm\.{_PARAM})$")


def text_key_map(keys: Iterable[str]) -> Tuple[Dict[str, str], List[str]]:
    """CLIPTextModel keys (``text_model.*``, or without it as in FastComposer's release) → keys under
    ``text_model.`` of the WebUI's ``cond_stage_model.transformer``."""
    out, bad = {}, []
    for k in keys:
        r = k[len("text_model."):] if k.startswith("text_model.") else k
        if _RE_TEXT.match(r):
            out[k] = r
        else:
            bad.append(k)
    return out, bad


# ----------------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------------

_VAE_RES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "query": "q", "to_k": "k", "key": "k", "to_v": "v",
             "value": "v", "to_out.0": "proj_out", "proj_attn": "proj_out"}
_RE_VAE_RES = re.compile(rf"^(norm1|conv1|norm2|conv2|conv_shortcut)\.{_PARAM}$")
_RE_VAE_ATTN = re.compile(rf"^(group_norm|to_q|query|to_k|key|to_v|value|to_out\.0|proj_attn)\.{_PARAM}$")


def vae_key_map(keys: Iterable[str]) -> Tuple[Dict[str, str], List[str]]:
    """diffusers AutoencoderKL keys → ldm AutoencoderKL keys (no prefixes). Handles the old
    (query/key/value/proj_attn) and new (to_q/to_k/to_v/to_out.0) attention names."""
    keys = list(keys)
    n_up = 1 + max([int(m.group(1)) for k in keys for m in [re.match(r"decoder\.up_blocks\.(\d+)\.", k)] if m],
                   default=-1)
    out, bad = {}, []

    def res(rest):
        m = _RE_VAE_RES.match(rest)
        return None if not m else f"{_VAE_RES[m.group(1)]}.{m.group(2)}"

    def att(rest):
        m = _RE_VAE_ATTN.match(rest)
        return None if not m else f"{_VAE_ATTN[m.group(1)]}.{m.group(2)}"

    for k in keys:
        t = None
        if m := re.fullmatch(rf"(encoder|decoder)\.(conv_in|conv_out)\.{_PARAM}", k):
            t = k
        elif m := re.fullmatch(rf"(encoder|decoder)\.conv_norm_out\.{_PARAM}", k):
            t = f"{m.group(1)}.norm_out.{m.group(2)}"
        elif m := re.fullmatch(rf"(quant_conv|post_quant_conv)\.{_PARAM}", k):
            t = k
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
            r = res(m.group(3))
            t = r and f"encoder.down.{m.group(1)}.block.{m.group(2)}.{r}"
        elif m := re.fullmatch(rf"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.{_PARAM}", k):
            t = f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k):
            r = res(m.group(3))
            t = r and f"decoder.up.{n_up - 1 - int(m.group(1))}.block.{m.group(2)}.{r}"
        elif m := re.fullmatch(rf"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.{_PARAM}", k):
            t = f"decoder.up.{n_up - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", k):
            r = res(m.group(3))
            t = r and f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{r}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", k):
            r = att(m.group(2))
            t = r and f"{m.group(1)}.mid.attn_1.{r}"
        if t:
            out[k] = t
        else:
            bad.append(k)
    return out, bad


def _vae_tensor(dst_key: str, t: torch.Tensor) -> torch.Tensor:
    if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", dst_key) and t.ndim == 2:
        return t[:, :, None, None]
    return t


def convert_vae_state_dict(sd: Mapping[str, torch.Tensor], *, prefix: str = "", out_prefix: str = "") -> Dict[str, torch.Tensor]:
    src = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    kmap, bad = vae_key_map(src)
    if bad:
        raise UnmappedKeysError("vae", [prefix + k for k in bad])
    return {out_prefix + kmap[k]: _vae_tensor(kmap[k], v) for k, v in src.items()}


def convert_text_state_dict(sd: Mapping[str, torch.Tensor], *, prefix: str = "", out_prefix: str = "") -> Dict[str, torch.Tensor]:
    src = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    kmap, bad = text_key_map(src)
    if bad:
        raise UnmappedKeysError("text_encoder", [prefix + k for k in bad])
    out = {}
    for k, v in src.items():
        if kmap[k] == "embeddings.position_ids":
            v = _position_ids(v.shape)
        out[out_prefix + kmap[k]] = v
    return out


def _position_ids(shape) -> torch.Tensor:
    n = shape[-1]
    return torch.arange(n, dtype=torch.int64).reshape(shape)


# ----------------------------------------------------------------------------------------------------
# The whole checkpoint
# ----------------------------------------------------------------------------------------------------

def webui_key_plan(keys: Iterable[str]) -> Tuple[Dict[str, str], List[str]]:
    """Every key of a FastComposer checkpoint → its WebUI key (or '' for keys that are deliberately not
    written: ``image_encoder.*``, ``postfuse_module.*``). Returns (plan, unmapped)."""
    keys = list(keys)
    plan: Dict[str, str] = {}
    bad: List[str] = []
    groups = {"unet.": [], "text_encoder.": [], "vae.": []}
    for k in keys:
        for g in groups:
            if k.startswith(g):
                groups[g].append(k[len(g):])
                break
        else:
            if k.startswith(("image_encoder.", "postfuse_module.")):
                plan[k] = ""
            else:
                bad.append(k)
    for g, fn, out in (("unet.", unet_key_map, UNET_OUT), ("text_encoder.", text_key_map, TEXT_OUT),
                       ("vae.", vae_key_map, VAE_OUT)):
        if not groups[g]:
            continue
        try:
            m, b = fn(groups[g])
        except UnmappedKeysError:  # layout not recognised at all
            m, b = {}, groups[g]
        plan.update({g + k: out + v for k, v in m.items()})
        bad.extend(g + k for k in b)
    return plan, bad


def write_webui_checkpoint(fastcomposer_ckpt, out_path, *, dtype: Optional[torch.dtype] = torch.float16) -> str:
    """Write FastComposer's U-Net, text encoder and VAE as a WebUI-loadable SD1.5 ``.safetensors``.

    ``dtype`` casts floating-point tensors (default float16, ~2 GB; None keeps the source dtypes).
    The file is written atomically (temporary file + ``os.replace``). Raises ``ModelFileError`` for a
    bad source file, missing groups, or keys it cannot map (listed). Returns ``out_path``.
    """
    out_path = os.fspath(out_path)
    if not out_path.lower().endswith(".safetensors"):
        raise ModelFileError(out_path, "the WebUI checkpoint must be written as .safetensors")
    with CheckpointReader(fastcomposer_ckpt) as reader:
        keys = reader.keys()
        for g, probe in (("unet.", "unet.conv_in.weight"), ("text_encoder.", None), ("vae.", "vae.decoder.conv_in.weight")):
            if not any(k.startswith(g) for k in keys):
                raise ModelFileError(reader.path, f"missing keys {g}* (not a full FastComposer release checkpoint)")
            if probe and probe not in reader:
                raise ModelFileError(reader.path, f"missing keys {probe}")
        plan, bad = webui_key_plan(keys)
        if bad:
            raise ModelFileError(reader.path, f"cannot convert to a WebUI checkpoint: unmapped keys {_list_keys(bad, 12)}")
        items = []
        for k, dst in plan.items():
            if not dst:
                continue
            shape = reader.shape(k)
            src_dt = reader.dtype(k)
            if dst.endswith("position_ids"):
                items.append((dst, (lambda s=shape: _position_ids(s)), torch.int64, shape))
                continue
            if k.startswith("unet."):
                def get(k=k):
                    return _unet_tensor(k, reader.get(k))
                if re.search(r"\.proj_(in|out)\.weight$", k) and len(shape) == 2:
                    shape = tuple(shape) + (1, 1)
            elif k.startswith("vae."):
                def get(k=k, dst=dst):
                    return _vae_tensor(dst, reader.get(k))
                if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", dst) and len(shape) == 2:
                    shape = tuple(shape) + (1, 1)
            else:
                def get(k=k):
                    return reader.get(k)
            dt = dtype if (dtype is not None and src_dt.is_floating_point) else src_dt
            items.append((dst, get, dt, tuple(shape)))
        pos_key = TEXT_OUT + "embeddings.position_ids"
        pe_key = next((k for k, d in plan.items() if d == TEXT_OUT + "embeddings.position_embedding.weight"), None)
        if pe_key is not None and not any(it[0] == pos_key for it in items):
            shape = (1, reader.shape(pe_key)[0])  # the WebUI's transformers keeps it as a persistent buffer
            items.append((pos_key, (lambda s=shape: _position_ids(s)), torch.int64, shape))
        dsts = [it[0] for it in items]
        if len(set(dsts)) != len(dsts):
            dup = sorted({d for d in dsts if dsts.count(d) > 1})
            raise ModelFileError(reader.path, f"cannot convert: several keys map to {_list_keys(dup)}")
        write_safetensors_atomic(out_path, items, metadata={"format": "pt", "source": "FastComposer (sd-webui-freediff)"})
    return out_path


# ----------------------------------------------------------------------------------------------------
# Is the WebUI's loaded U-Net FastComposer's?
# ----------------------------------------------------------------------------------------------------

_PROBE_PATTERNS = (
    r"input_blocks\.\d+\.1\.transformer_blocks\.0\.attn2\.to_k\.weight",
    r"middle_block\.1\.transformer_blocks\.0\.attn2\.to_v\.weight",
    r"output_blocks\.\d+\.1\.transformer_blocks\.0\.attn2\.to_k\.weight",
    r"out\.2\.weight",
)
_PROBE_N = 2048
_fp_cache: Dict[Tuple[str, int, int], Dict[str, torch.Tensor]] = {}


def unet_fingerprint(fastcomposer_ckpt) -> Dict[str, torch.Tensor]:
    """A few slices of FastComposer's U-Net weights, keyed by ldm key (relative to the diffusion model),
    float32. Cheap: reads ~10 k values; cached by (path, mtime, size)."""
    fk = _file_key(fastcomposer_ckpt)
    if fk in _fp_cache:
        return _fp_cache[fk]
    with CheckpointReader(fk[0]) as reader:
        src = [k[len("unet."):] for k in reader.keys() if k.startswith("unet.")]
        if not src:
            raise ModelFileError(reader.path, "missing keys unet.*")
        kmap, _bad = unet_key_map(src)
        inv = {v: k for k, v in kmap.items()}
        fp = {}
        for pat in _PROBE_PATTERNS:
            hits = sorted((v for v in inv if re.fullmatch(pat, v)), key=lambda s: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", s)])
            if hits:
                pick = hits[len(hits) // 2] if pat.startswith(("input", "output")) else hits[0]
                fp[pick] = reader.get_flat_head("unet." + inv[pick], _PROBE_N).float().clone()
    _fp_cache[fk] = fp
    return fp


def is_fastcomposer_unet(unet: Union[torch.nn.Module, Mapping[str, torch.Tensor]],
                         fingerprint_or_ckpt, *, rtol: float = 2e-3, atol: float = 1e-5) -> bool:
    """Whether ``unet`` (the WebUI's ``sd_model.model.diffusion_model``, or a state dict with keys
    relative to it or prefixed ``model.diffusion_model.``) holds FastComposer's U-Net weights.

    Compares a few weight slices with a tolerance that absorbs fp16/bf16 storage. Weights changed in
    place (e.g. a LoRA merged into the U-Net) make it answer False.
    """
    fp = fingerprint_or_ckpt if isinstance(fingerprint_or_ckpt, Mapping) else unet_fingerprint(fingerprint_or_ckpt)
    if not fp:
        return False
    if isinstance(unet, torch.nn.Module):
        tensors = dict(unet.named_parameters())
        get = tensors.get
    else:
        def get(k):
            v = unet.get(k)
            return v if v is not None else unet.get(UNET_OUT + k)
    for k, ref in fp.items():
        t = get(k)
        if t is None:
            return False
        flat = t.detach().reshape(-1)[: ref.numel()].float().cpu()
        if flat.numel() != ref.numel() or not torch.allclose(flat, ref, rtol=rtol, atol=atol):
            return False
    return True


if __name__ == "__main__":
    # `python -m lib_freediff.fastcomposer.convert SRC [DST]`: the same command as `python -m lib_freediff.fastcomposer convert`
    import sys

    from lib_freediff.fastcomposer.__main__ import main

    sys.exit(main(["convert", *sys.argv[1:]]))
