"""Loading the official FastComposer release checkpoint (``pytorch_model.bin``) or a ``.safetensors``
copy of it, and keeping the loaded model around between generations.

The release is one flat state dict of the whole training model (diffusers / transformers layouts)::

    image_encoder.vision_model.*      CLIP ViT-L/14 vision tower    } what this module loads
    image_encoder.visual_projection.* 1024 -> 768 projection        }
    postfuse_module.{mlp1,mlp2,layer_norm}.*                        }
    unet.*  text_encoder.*  vae.*     SD1.5 parts (see convert.py: written as a WebUI checkpoint)

Pickles are read with torch's own weights-only unpickler only (``torch.serialization.load(weights_only=True)``:
a pickle that names any other object is refused and nothing in it runs), memory-mapped where the file
format allows it; safetensors files are read key by key. Every problem with a file raises
``ModelFileError`` naming the file and the problem (truncated, not a checkpoint, objects other than
tensors, wrong layout).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import pickle
import re
import struct
import tempfile
import threading
import zipfile
from collections import OrderedDict
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import ModelFileError
from .model import FastComposerModel, PostfuseModule, build_image_encoder, vision_config

GROUPS = ("image_encoder.", "postfuse_module.", "unet.", "text_encoder.", "vae.")
MODEL_PREFIXES = ("image_encoder.", "postfuse_module.")

_SAFETENSORS_EXT = (".safetensors", ".sft")


def _is_position_ids(key: str) -> bool:
    return key.endswith("position_ids")


def _list_keys(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


# ----------------------------------------------------------------------------------------------------
# Reading a checkpoint
# ----------------------------------------------------------------------------------------------------

class CheckpointReader:
    """Read-only access to a checkpoint's tensors by key, without loading what is not asked for.

    ``.bin``/``.pt``/``.ckpt`` pickles are loaded with ``weights_only=True`` (memory-mapped when the
    file is in torch's zip format); ``.safetensors`` files are opened lazily with ``safe_open``.
    Use as a context manager or call ``close()``.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._st = None
        self._sd: Optional[Dict[str, torch.Tensor]] = None
        if not os.path.isfile(self.path):
            raise ModelFileError(self.path, "file not found" if not os.path.exists(self.path) else "not a file")
        if os.path.getsize(self.path) == 0:
            raise ModelFileError(self.path, "the file is empty")
        if self.path.lower().endswith(_SAFETENSORS_EXT) or _file_format(self.path) == "safetensors":
            self._open_safetensors()
        else:
            self._open_pickle()

    # -- opening --------------------------------------------------------------------------------------

    def _open_safetensors(self):
        try:
            from safetensors import safe_open

            self._st = safe_open(self.path, framework="pt", device="cpu")
            self._keys = list(self._st.keys())
        except Exception as e:  # SafetensorError is not importable under a stable name
            raise ModelFileError(self.path, f"not a readable safetensors file (truncated or corrupt?): {e}") from None

    def _open_pickle(self):
        obj = _torch_load_weights_only(self.path)
        if isinstance(obj, Mapping) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "model", "module"):
            obj = next(iter(obj.values()))
        if not isinstance(obj, Mapping):
            raise ModelFileError(self.path, f"not a checkpoint: the pickle holds a {type(obj).__name__}, "
                                            "not a dict of tensors")
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise ModelFileError(self.path, f"not a checkpoint: key {bad[0]!r} is not a string")
        for k, v in obj.items():
            if not isinstance(v, torch.Tensor):
                raise ModelFileError(self.path, f"not a checkpoint: entry {k!r} is a {type(v).__name__}, not a tensor")
        sd = dict(obj)
        if sd and all(k.startswith("module.") for k in sd):  # saved from a DDP-wrapped model
            sd = {k[len("module."):]: v for k, v in sd.items()}
        self._sd = sd
        self._keys = list(self._sd.keys())

    # -- access ---------------------------------------------------------------------------------------

    def keys(self) -> List[str]:
        return list(self._keys)

    def __contains__(self, key) -> bool:
        return key in self._index()

    def _index(self):
        if not hasattr(self, "_keyset"):
            self._keyset = set(self._keys)
        return self._keyset

    def shape(self, key: str) -> Tuple[int, ...]:
        if self._sd is not None:
            return tuple(self._sd[key].shape)
        try:
            return tuple(self._st.get_slice(key).get_shape())
        except Exception as e:
            raise ModelFileError(self.path, f"cannot read the shape of {key}: {e}") from None

    def dtype(self, key: str) -> torch.dtype:
        if self._sd is not None:
            return self._sd[key].dtype
        name = str(self._st.get_slice(key).get_dtype())
        for dt, n in _ST_DTYPES.items():
            if n == name:
                return dt
        raise ModelFileError(self.path, f"tensor {key} has an unsupported dtype {name}")

    def get(self, key: str) -> torch.Tensor:
        if self._sd is not None:
            return self._sd[key]
        try:
            return self._st.get_tensor(key)
        except Exception as e:
            raise ModelFileError(self.path, f"cannot read tensor {key} (truncated or corrupt?): {e}") from None

    def get_flat_head(self, key: str, n: int) -> torch.Tensor:
        """The first ``n`` values of a tensor, flattened."""
        return self.get(key).reshape(-1)[:n]

    def close(self):
        self._st = None
        self._sd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy (non-zip) format opens with its pickled magic number 0x1950a86a20f9469cfc6c
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_SNIFF_BYTES = 512
_TRUNCATED = "truncated: the file ends before its data (an interrupted download or copy?)"


def _file_format(path: str) -> str:
    """"zip" (torch.save), "legacy" (torch.save's old format), "safetensors", or why it is not a checkpoint."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise ModelFileError(path, f"cannot be read: {e.strerror or e}") from None
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "legacy"
    if len(head) > 9 and head[8:10] == b'{"' and 0 < int.from_bytes(head[:8], "little") < os.path.getsize(path):
        return "safetensors"
    if head[:1] == b"\x80":  # the PROTO opcode of a pickle
        return "a pickle not written by torch.save, not a PyTorch checkpoint"
    text = head.lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        return ("a Git LFS pointer (a small text file standing for the real one), not the checkpoint: "
                "download the file itself")
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "an HTML page, not a checkpoint (a failed download?)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of what was read
            return f"neither a zip archive (torch.save) nor a pickle: not a PyTorch checkpoint (it begins {head[:8].hex(' ')})"
    return "a text file, not a PyTorch checkpoint"


def _check_torch_zip(path: str) -> None:
    """What is wrong with a zip that cannot be torch.save's: cut short, or another kind of zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise ModelFileError(path, "truncated or corrupt: the directory at the end of its zip archive is missing, "
                                   "so the file was probably cut short (an interrupted download or copy?)") from None
    if not any(n.endswith("/data.pkl") for n in names):
        raise ModelFileError(path, "a zip archive but not a PyTorch checkpoint (no data.pkl inside: not written by torch.save)")


def _torch_load_weights_only(path: str):
    """The object a torch.save file holds, read by torch's own weights-only unpickler.

    ``torch.serialization.load``, not ``torch.load``: the WebUI replaces ``torch.load`` with its own checker,
    which returns None for the zip entries a recent torch writes (``.format_version``, ...)."""
    fmt = _file_format(path)
    if fmt not in ("zip", "legacy"):
        raise ModelFileError(path, fmt)
    if fmt == "zip":
        _check_torch_zip(path)
    kw = dict(map_location="cpu", weights_only=True)
    if fmt == "zip" and "mmap" in inspect.signature(torch.serialization.load).parameters:
        kw["mmap"] = True
    try:
        return torch.serialization.load(path, **kw)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"unsupported GLOBAL (\S+)", msg, re.I) or re.search(r"GLOBAL (\S+)", msg)
        if m:
            raise ModelFileError(path, f"refused: the pickle holds objects other than tensors (it references "
                                       f"{m.group(1)}); only tensors are allowed (read with weights_only=True)") from None
        detail = _weights_only_detail(msg)
        raise ModelFileError(path, "corrupt, or holds objects other than tensors: the weights-only reader "
                                   f"refused it{': ' + detail if detail else ''}") from None
    except (EOFError, struct.error):
        raise ModelFileError(path, _TRUNCATED) from None
    except (RuntimeError, ValueError, OSError, AttributeError, IndexError, KeyError, UnicodeDecodeError,
            ImportError, MemoryError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "unexpected EOF" in first:
            raise ModelFileError(path, _TRUNCATED) from None
        raise ModelFileError(path, f"corrupt: torch cannot read it ({type(e).__name__}: {first.split('. ')[0][:200]})") from None


def _weights_only_detail(msg: str) -> str:
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("Unsupported", "Trying to", "Unexpected", "Can only", "Unknown", "Bad", "Invalid")):
            return ln[:200]
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error" in ln:
            rest = ln.split("WeightsUnpickler error:", 1)[-1].strip()
            if rest:
                return rest[:200]
            if i + 1 < len(lines):
                return lines[i + 1][:200]
    return ""


# ----------------------------------------------------------------------------------------------------
# Building the model from a checkpoint
# ----------------------------------------------------------------------------------------------------

_VIS = "image_encoder.vision_model."


def infer_vision_config(reader: CheckpointReader, num_attention_heads: Optional[int] = None):
    """A ``CLIPVisionConfig`` read off the tensors' shapes (works for ViT-L/14 and tiny test models).

    The head count is not visible in the shapes: it is ``hidden // 64`` (CLIP's head width) unless given.
    """
    path = reader.path
    need = [_VIS + "embeddings.patch_embedding.weight", _VIS + "embeddings.position_embedding.weight",
            _VIS + "encoder.layers.0.mlp.fc1.weight", "image_encoder.visual_projection.weight"]
    missing = [k for k in need if k not in reader]
    if missing:
        raise ModelFileError(path, f"not a FastComposer checkpoint: missing keys {_list_keys(missing)}")
    pe = reader.shape(need[0])
    if len(pe) != 4 or pe[1] != 3 or pe[2] != pe[3]:
        raise ModelFileError(path, f"shape of {need[0]} is {list(pe)}, expected [hidden, 3, patch, patch]")
    hidden, patch = pe[0], pe[2]
    pos = reader.shape(need[1])
    if len(pos) != 2 or pos[1] != hidden:
        raise ModelFileError(path, f"shape of {need[1]} is {list(pos)}, expected [positions, {hidden}]")
    side = math.isqrt(max(pos[0] - 1, 0))
    if side * side != pos[0] - 1 or side == 0:
        raise ModelFileError(path, f"shape of {need[1]} is {list(pos)}: {pos[0]} positions is not 1 + a square grid")
    fc1 = reader.shape(need[2])
    if len(fc1) != 2 or fc1[1] != hidden:
        raise ModelFileError(path, f"shape of {need[2]} is {list(fc1)}, expected [intermediate, {hidden}]")
    proj = reader.shape(need[3])
    if len(proj) != 2 or proj[1] != hidden:
        raise ModelFileError(path, f"shape of {need[3]} is {list(proj)}, expected [projection, {hidden}]")
    layer_ids = {int(m.group(1)) for k in reader.keys()
                 for m in [re.match(re.escape(_VIS) + r"encoder\.layers\.(\d+)\.", k)] if m}
    n_layers = max(layer_ids) + 1
    missing_layers = sorted(set(range(n_layers)) - layer_ids)
    if missing_layers:
        raise ModelFileError(path, f"missing keys {_VIS}encoder.layers.{missing_layers[0]}.*")
    if num_attention_heads is None:
        if hidden % 64:
            raise ModelFileError(path, f"cannot infer the image encoder's head count for width {hidden} "
                                       "(not a multiple of 64); pass num_attention_heads")
        num_attention_heads = hidden // 64
    return vision_config(hidden_size=hidden, intermediate_size=fc1[0], num_hidden_layers=n_layers,
                         num_attention_heads=num_attention_heads, image_size=patch * side, patch_size=patch,
                         projection_dim=proj[0])


def load_fastcomposer(path, *, dtype: torch.dtype = torch.float32,
                      num_attention_heads: Optional[int] = None) -> FastComposerModel:
    """Load the image encoder and post-fuse module of a FastComposer checkpoint (``.bin``/``.safetensors``).

    Only ``image_encoder.*`` and ``postfuse_module.*`` are read. The returned model is on the CPU in
    ``dtype``, in eval mode, without gradients. Raises ``ModelFileError`` for any bad file.
    """
    with CheckpointReader(path) as reader:
        return _load_from_reader(reader, dtype=dtype, num_attention_heads=num_attention_heads)


def _load_from_reader(reader: CheckpointReader, *, dtype, num_attention_heads) -> FastComposerModel:
    path = reader.path
    keys = reader.keys()
    wanted = [k for k in keys if k.startswith(MODEL_PREFIXES) and not _is_position_ids(k)]
    if not any(k.startswith("postfuse_module.") for k in keys):
        if not any(k.startswith(GROUPS) for k in keys):
            raise ModelFileError(path, "not a FastComposer checkpoint: none of the key groups "
                                       f"{', '.join(g + '*' for g in GROUPS)} is present")
        raise ModelFileError(path, "not a FastComposer checkpoint: missing keys postfuse_module.* "
                                   "(mlp1, mlp2, layer_norm)")
    ln = "postfuse_module.layer_norm.weight"
    if ln not in reader:
        raise ModelFileError(path, f"missing keys {ln}")
    ln_shape = reader.shape(ln)
    if len(ln_shape) != 1:
        raise ModelFileError(path, f"shape of {ln} is {list(ln_shape)}, expected [embed_dim]")
    embed_dim = ln_shape[0]

    vcfg = infer_vision_config(reader, num_attention_heads)
    if vcfg.projection_dim != embed_dim:
        raise ModelFileError(path, f"shape of image_encoder.visual_projection.weight is "
                                   f"{list(reader.shape('image_encoder.visual_projection.weight'))}, expected "
                                   f"[{embed_dim}, {vcfg.hidden_size}] (the post-fuse width is {embed_dim})")

    with _no_init():
        model = FastComposerModel(build_image_encoder(vcfg), PostfuseModule(embed_dim))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not _is_position_ids(k)}

    missing = [k for k in expected if k not in reader]
    if missing:
        raise ModelFileError(path, f"missing keys {_list_keys(missing)}")
    unexpected = [k for k in wanted if k not in expected]
    if unexpected:
        raise ModelFileError(path, f"unexpected keys {_list_keys(unexpected)} (not a FastComposer layout?)")
    for k, shp in expected.items():
        got = reader.shape(k)
        if tuple(got) != shp:
            raise ModelFileError(path, f"shape of {k} is {list(got)}, expected {list(shp)}")

    sd = {}
    for k in expected:
        t = reader.get(k)
        if not t.is_floating_point():
            raise ModelFileError(path, f"tensor {k} has dtype {t.dtype}, expected a floating-point tensor")
        sd[k] = t.to(dtype=dtype)
    model.to(dtype=dtype)
    res = model.load_state_dict(sd, strict=False)
    left = [k for k in res.missing_keys if not _is_position_ids(k)]
    if left or res.unexpected_keys:  # cannot happen after the checks above
        raise ModelFileError(path, f"missing keys {_list_keys(left)}; unexpected {_list_keys(res.unexpected_keys)}")
    model.eval().requires_grad_(False)
    return model


@contextlib.contextmanager
def _no_init():
    """Skip the random initialisation of layers whose weights are about to be overwritten."""
    saved = {}
    names = ("kaiming_uniform_", "uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "zeros_", "ones_")
    for n in names:
        saved[n] = getattr(torch.nn.init, n)
        setattr(torch.nn.init, n, lambda t, *a, **k: t)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


# ----------------------------------------------------------------------------------------------------
# Writing safetensors (streamed, atomic)
# ----------------------------------------------------------------------------------------------------

_ST_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_safetensors_atomic(dst, items: Sequence[Tuple[str, Callable[[], torch.Tensor], torch.dtype, Tuple[int, ...]]],
                             metadata: Optional[Dict[str, str]] = None) -> None:
    """Write a safetensors file tensor by tensor (low memory), atomically.

    ``items`` are ``(key, get_tensor, dtype, shape)``; ``get_tensor()`` is called once, while writing.
    The data goes to a temporary file beside ``dst`` that replaces ``dst`` (``os.replace``) only once
    complete and flushed, so ``dst`` is never left half-written.
    """
    dst = os.fspath(dst)
    items = sorted(items, key=lambda it: it[0])
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for key, _get, dt, shape in items:
        if dt not in _ST_DTYPES:
            raise ValueError(f"{key}: dtype {dt} cannot be stored in safetensors")
        nbytes = math.prod(shape) * torch.empty((), dtype=dt).element_size()
        header[key] = {"dtype": _ST_DTYPES[dt], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)

    d = os.path.dirname(os.path.abspath(dst))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(dst) + "-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(hb).to_bytes(8, "little"))
            f.write(hb)
            for key, get, dt, shape in items:
                t = get()
                if tuple(t.shape) != tuple(shape):
                    raise ValueError(f"{key}: shape {list(t.shape)} is not the announced {list(shape)}")
                t = t.detach().to(device="cpu", dtype=dt).contiguous()
                if t.numel():
                    f.write(t.reshape(-1).view(torch.uint8).numpy().data)
                del t
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def convert_bin_to_safetensors(src, dst, *, dtype: Optional[torch.dtype] = None) -> str:
    """Write a ``.safetensors`` copy of a FastComposer ``pytorch_model.bin`` (all keys; ``position_ids``
    buffers dropped). ``dtype`` casts floating-point tensors (None keeps each tensor's dtype).
    Atomic: ``dst`` appears only when complete. Returns ``dst``."""
    with CheckpointReader(src) as reader:
        keys = reader.keys()
        if not any(k.startswith("postfuse_module.") for k in keys):
            raise ModelFileError(reader.path, "not a FastComposer checkpoint: missing keys postfuse_module.*")
        items = []
        for k in keys:
            if _is_position_ids(k):
                continue
            dt = reader.dtype(k)
            if dtype is not None and dt.is_floating_point:
                dt = dtype
            items.append((k, (lambda k=k: reader.get(k)), dt, reader.shape(k)))
        write_safetensors_atomic(dst, items, metadata={"format": "pt", "source": "FastComposer"})
    return os.fspath(dst)


# ----------------------------------------------------------------------------------------------------
# Hashes
# ----------------------------------------------------------------------------------------------------

_hash_cache: Dict[Tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def _file_key(path) -> Tuple[str, int, int]:
    p = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(p)
    except OSError:
        raise ModelFileError(path, "file not found") from None
    return p, st.st_mtime_ns, st.st_size


def model_hash(path, length: int = 10) -> str:
    """sha256 of the file's bytes, first ``length`` hex digits; cached by (path, mtime, size)."""
    key = _file_key(path)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key][:length]
    h = hashlib.sha256()
    with open(key[0], "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _hash_lock:
        _hash_cache[key] = digest
    return digest[:length]


# ----------------------------------------------------------------------------------------------------
# The cache / manager used by the WebUI layer
# ----------------------------------------------------------------------------------------------------

class FastComposerCache:
    """Holds one loaded FastComposer model (on the CPU between generations) and subject embeddings.

    - ``get(path)`` loads on first use, and again only when the path, mtime or size changes.
    - ``on_device(device, dtype)`` moves the model for the duration of a ``with`` block; afterwards its
      parameters are the very CPU tensors they were before (no precision lost to a dtype round trip).
    - ``subject_embeddings(path, images, device, dtype)`` → ``(n, D)`` float32 CPU, cached per model
      and per image content (LRU of ``max_subjects``).
    - ``unload()`` drops the model and the cached embeddings.
    Thread-safe (one lock); the WebUI generates one job at a time.
    """

    def __init__(self, max_subjects: int = 32, dtype: torch.dtype = torch.float32):
        self.max_subjects = int(max_subjects)
        self.dtype = dtype
        self._lock = threading.RLock()
        self._model: Optional[FastComposerModel] = None
        self._key: Optional[Tuple[str, int, int]] = None
        self._subjects: "OrderedDict[Tuple, torch.Tensor]" = OrderedDict()
        self._on_device_depth = 0

    @property
    def model(self) -> Optional[FastComposerModel]:
        return self._model

    @property
    def loaded_path(self) -> Optional[str]:
        return self._key[0] if self._key else None

    def get(self, path, num_attention_heads: Optional[int] = None) -> FastComposerModel:
        key = _file_key(path)
        with self._lock:
            if self._model is None or self._key != key:
                self.unload()
                self._model = load_fastcomposer(key[0], dtype=self.dtype, num_attention_heads=num_attention_heads)
                self._key = key
            return self._model

    def unload(self) -> None:
        with self._lock:
            self._model = None
            self._key = None
            self._subjects.clear()
        import gc

        gc.collect()

    @contextlib.contextmanager
    def on_device(self, device, dtype: Optional[torch.dtype] = None) -> Iterator[FastComposerModel]:
        with self._lock:
            model = self._model
            if model is None:
                raise RuntimeError("FastComposer: no model loaded (call get(path) first)")
            if self._on_device_depth:
                self._on_device_depth += 1
                try:
                    yield model
                finally:
                    self._on_device_depth -= 1
                return
            # Module.to() rewrites parameters' .data in place but replaces buffer tensors: keep both.
            params = [(mod, name, p, p.data) for mod in model.modules()
                      for name, p in mod._parameters.items() if p is not None]
            buffers = [(mod, name, b) for mod in model.modules() for name, b in mod._buffers.items() if b is not None]
            self._on_device_depth = 1
            try:
                model.to(device=device, dtype=dtype) if dtype is not None else model.to(device=device)
                yield model
            finally:
                self._on_device_depth = 0
                for mod, name, p, data in params:
                    p.data = data
                    mod._parameters[name] = p
                for mod, name, b in buffers:
                    mod._buffers[name] = b
                if torch.device(device).type == "cuda" and torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def subject_embeddings(self, path, images: Sequence, device="cpu", dtype: Optional[torch.dtype] = None,
                           num_attention_heads: Optional[int] = None) -> torch.Tensor:
        """Embeddings ``(n, D)`` (float32, CPU) of reference images: PIL images (preprocessed here) or
        already preprocessed ``(3, S, S)`` tensors. Only images not yet cached are encoded."""
        from .preprocess import preprocess_image

        model = self.get(path, num_attention_heads=num_attention_heads)
        pix = []
        for im in images:
            t = im if isinstance(im, torch.Tensor) else preprocess_image(im, size=model.image_size)
            pix.append(t.detach().to("cpu", torch.float32).contiguous())
        with self._lock:
            keys = [(self._key, str(dtype), hashlib.sha256(t.numpy().tobytes()).hexdigest() + str(tuple(t.shape)))
                    for t in pix]
            todo = [i for i, k in enumerate(keys) if k not in self._subjects]
            if todo:
                with self.on_device(device, dtype) as m:
                    emb = m.encode_subjects(torch.stack([pix[i] for i in todo]))
                for i, e in zip(todo, emb):
                    self._subjects[keys[i]] = e.detach().to("cpu", torch.float32).clone()
            out = []
            for k in keys:
                self._subjects.move_to_end(k)
                out.append(self._subjects[k])
            while len(self._subjects) > self.max_subjects:
                self._subjects.popitem(last=False)
            return torch.stack(out)


FastComposerManager = FastComposerCache
