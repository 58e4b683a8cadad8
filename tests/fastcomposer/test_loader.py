"""Loading the release checkpoint (.bin / .safetensors), file errors, hashing, the cache."""

import os
import pickle

import pytest
import torch
from PIL import Image

from lib_freediff.errors import ModelFileError
from lib_freediff.fastcomposer import loader
from lib_freediff.fastcomposer.loader import (CheckpointReader, FastComposerCache, convert_bin_to_safetensors,
                                              load_fastcomposer, model_hash)

from . import fixtures


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_both_formats_give_the_same_weights(release):
    a = load_fastcomposer(release.bin_path)
    b = load_fastcomposer(release.st_path)
    _same_weights(a, b)
    sd = a.state_dict()
    for k, v in sd.items():
        if not k.endswith("position_ids"):
            torch.testing.assert_close(v, release.state_dict[k].float(), rtol=0, atol=0)
    assert a.dtype == torch.float32 and a.embed_dim == fixtures.EMBED_DIM
    assert a.image_encoder.config.num_hidden_layers == 2 and a.image_size == 224
    assert not any(p.requires_grad for p in a.parameters())


def test_safetensors_copy_holds_every_key_but_position_ids(release):
    with CheckpointReader(release.st_path) as r:
        keys = set(r.keys())
        assert keys == {k for k in release.state_dict if not k.endswith("position_ids")}
        for k in keys:
            assert r.dtype(k) == release.state_dict[k].dtype
            assert torch.equal(r.get(k), release.state_dict[k])


def test_bin_is_read_with_weights_only(release, monkeypatch):
    seen = []
    real = torch.serialization.load

    def spy(*a, **kw):
        seen.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch.serialization, "load", spy)
    load_fastcomposer(release.bin_path)
    assert seen and all(w is True for w in seen)


def test_bin_loads_while_the_webui_replaces_torch_load(release, tmp_path, monkeypatch):
    """The WebUI's safe unpickler (modules/safe.py) takes torch.load's place and answers None for the zip
    entries a recent torch writes; the loader must not go through it."""
    path = tmp_path / "recent.bin"
    torch.save(dict(release.state_dict), path)  # written by the torch under test
    monkeypatch.setattr(torch, "load", lambda *a, **kw: None)
    _same_weights(load_fastcomposer(path), load_fastcomposer(release.st_path))


def _zip_without_data_pkl(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")


@pytest.mark.parametrize("write,message", [
    (lambda p, sd: p.write_bytes(_saved(sd)[: len(_saved(sd)) // 3]), "truncated or corrupt: the directory at the end of its zip"),
    (lambda p, sd: p.write_bytes(_saved(sd, legacy=True)[:5000]), "truncated: the file ends before its data"),
    (lambda p, sd: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4520000000\n"),
     "a Git LFS pointer"),
    (lambda p, sd: p.write_text("<!DOCTYPE html><html><body>404</body></html>"), "an HTML page, not a checkpoint"),
    (lambda p, sd: p.write_text("weights go here\n"), "a text file, not a PyTorch checkpoint"),
    (lambda p, sd: p.write_bytes(b"\x00\xff" * 300), "neither a zip archive (torch.save) nor a pickle"),
    (lambda p, sd: _zip_without_data_pkl(p), "a zip archive but not a PyTorch checkpoint (no data.pkl"),
    (lambda p, sd: p.write_bytes(pickle.dumps({k: v.float().numpy() for k, v in sd.items()})), "a pickle not written by torch.save"),
    (lambda p, sd: torch.save({"weights": [v for v in sd.values()]}, p), "entry 'weights' is a list, not a tensor"),
    (lambda p, sd: torch.save({k: v.float().numpy() for k, v in sd.items()}, p), "refused: the pickle holds objects other than tensors"),
])
def test_unreadable_bin_says_what_is_wrong(release, tmp_path, write, message):
    path = tmp_path / "pytorch_model.bin"
    write(path, release.state_dict)
    with pytest.raises(ModelFileError) as e:
        load_fastcomposer(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)


def _saved(sd, legacy=False) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(dict(sd), buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def test_legacy_format_and_safetensors_content_under_a_bin_name(release, tmp_path):
    legacy = tmp_path / "legacy.bin"
    legacy.write_bytes(_saved(release.state_dict, legacy=True))
    _same_weights(load_fastcomposer(legacy), load_fastcomposer(release.st_path))
    renamed = tmp_path / "renamed.bin"
    renamed.write_bytes(open(release.st_path, "rb").read())
    _same_weights(load_fastcomposer(renamed), load_fastcomposer(release.st_path))


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError) as e:
        load_fastcomposer(tmp_path / "nope.bin")
    assert "nope.bin" in str(e.value) and "not found" in str(e.value)


@pytest.mark.parametrize("fmt", ["bin", "st"])
def test_truncated_file(release, tmp_path, fmt):
    src = release.bin_path if fmt == "bin" else release.st_path
    data = open(src, "rb").read()
    dst = tmp_path / ("cut.bin" if fmt == "bin" else "cut.safetensors")
    dst.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as e:
        load_fastcomposer(dst)
    assert str(dst) in str(e.value) and ("truncated" in str(e.value) or "corrupt" in str(e.value))


@pytest.mark.parametrize("name", ["junk.bin", "junk.safetensors"])
def test_random_bytes(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError) as e:
        load_fastcomposer(p)
    assert name in str(e.value)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.bin"
    p.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        load_fastcomposer(p)


def test_pickle_with_non_tensor(tmp_path, release):
    p = tmp_path / "mixed.bin"
    sd = dict(release.state_dict)
    sd["postfuse_module.note"] = 3
    torch.save(sd, p)
    with pytest.raises(ModelFileError) as e:
        load_fastcomposer(p)
    assert "postfuse_module.note" in str(e.value) and "not a tensor" in str(e.value)
    torch.save([1, 2, 3], p)
    with pytest.raises(ModelFileError, match="holds a list"):
        load_fastcomposer(p)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipfmt", [True, False])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, zipfmt):
    marker = tmp_path / "payload-ran"
    p = tmp_path / "evil.bin"
    obj = {"postfuse_module.layer_norm.weight": _Payload(str(marker))}
    if zipfmt:
        torch.save(obj, p)
    else:
        p.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(ModelFileError) as e:
        load_fastcomposer(p)
    assert not marker.exists()
    # a torch.save file goes to the weights-only unpickler; a bare pickle is refused unread
    assert "evil.bin" in str(e.value) and ("weights_only" if zipfmt else "not written by torch.save") in str(e.value)


def test_missing_keys(tmp_path, release):
    sd = {k: v for k, v in release.state_dict.items() if k != "postfuse_module.mlp1.fc1.weight"}
    p = tmp_path / "missing.bin"
    torch.save(sd, p)
    with pytest.raises(ModelFileError, match=r"missing keys postfuse_module\.mlp1\.fc1\.weight"):
        load_fastcomposer(p)
    sd = {k: v for k, v in release.state_dict.items() if not k.startswith("postfuse_module.")}
    torch.save(sd, p)
    with pytest.raises(ModelFileError, match=r"missing keys postfuse_module"):
        load_fastcomposer(p)
    sd = {k: v for k, v in release.state_dict.items() if not k.startswith("image_encoder.vision_model.encoder.layers.1.mlp")}
    torch.save(sd, p)
    with pytest.raises(ModelFileError, match=r"missing keys image_encoder\.vision_model\.encoder\.layers\.1\.mlp"):
        load_fastcomposer(p)
    torch.save({"foo.weight": torch.zeros(1)}, p)
    with pytest.raises(ModelFileError, match="not a FastComposer checkpoint"):
        load_fastcomposer(p)


def test_wrong_shapes(tmp_path, release):
    sd = dict(release.state_dict)
    sd["postfuse_module.mlp2.fc1.weight"] = torch.zeros(7, fixtures.EMBED_DIM)
    p = tmp_path / "shape.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items() if not k.endswith("position_ids")}, str(p))
    with pytest.raises(ModelFileError) as e:
        load_fastcomposer(p)
    assert f"shape of postfuse_module.mlp2.fc1.weight is [7, {fixtures.EMBED_DIM}] expected " \
           f"[{fixtures.EMBED_DIM}, {fixtures.EMBED_DIM}]".replace(" expected", ", expected") in str(e.value)
    sd = dict(release.state_dict)
    sd["image_encoder.visual_projection.weight"] = torch.zeros(10, fixtures.VISION_HIDDEN)
    p = tmp_path / "proj.bin"
    torch.save(sd, p)
    with pytest.raises(ModelFileError, match=r"shape of image_encoder\.visual_projection\.weight is \[10, 64\]"):
        load_fastcomposer(p)


def test_position_ids_are_optional(tmp_path, release):
    sd = {k: v for k, v in release.state_dict.items() if not k.endswith("position_ids")}
    p = tmp_path / "nopos.bin"
    torch.save(sd, p)
    _same_weights(load_fastcomposer(p), load_fastcomposer(release.bin_path))


def test_convert_is_atomic(tmp_path, release, monkeypatch):
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"previous content")
    real_get = CheckpointReader.get
    calls = {"n": 0}

    def failing_get(self, key):
        calls["n"] += 1
        if calls["n"] == 50:
            raise OSError("disk full (simulated)")
        return real_get(self, key)

    monkeypatch.setattr(CheckpointReader, "get", failing_get)
    with pytest.raises(OSError, match="simulated"):
        convert_bin_to_safetensors(release.bin_path, dst)
    assert dst.read_bytes() == b"previous content"
    assert sorted(os.listdir(tmp_path)) == ["out.safetensors"]  # no temp file left behind
    monkeypatch.setattr(CheckpointReader, "get", real_get)
    convert_bin_to_safetensors(release.bin_path, dst, dtype=torch.float16)
    with CheckpointReader(dst) as r:
        assert r.dtype("postfuse_module.layer_norm.weight") == torch.float16


def test_model_hash_stable_and_cached(tmp_path, release, monkeypatch):
    h1 = model_hash(release.bin_path)
    assert len(h1) == 10 and h1 == model_hash(release.bin_path)
    import hashlib

    assert h1 == hashlib.sha256(open(release.bin_path, "rb").read()).hexdigest()[:10]
    monkeypatch.setattr(hashlib, "sha256", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert model_hash(release.bin_path) == h1  # served from the (path, mtime, size) cache
    monkeypatch.undo()
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    a = model_hash(p)
    p.write_bytes(b"abcd")
    assert model_hash(p) != a
    with pytest.raises(ModelFileError):
        model_hash(tmp_path / "missing.bin")


def _img(color, size=(40, 30)):
    return Image.new("RGB", size, color)


def test_cache_loads_once_moves_and_restores(release, tmp_path, monkeypatch):
    cache = FastComposerCache(max_subjects=3)
    loads = []
    real = loader.load_fastcomposer
    monkeypatch.setattr(loader, "load_fastcomposer", lambda *a, **k: loads.append(a) or real(*a, **k))
    m = cache.get(release.st_path)
    assert cache.get(release.st_path) is m and len(loads) == 1
    before = {k: (v.data_ptr(), v.clone()) for k, v in m.state_dict().items()}
    with cache.on_device("cpu", torch.bfloat16) as md:
        assert md.dtype == torch.bfloat16
        with cache.on_device("cpu", torch.bfloat16) as inner:  # nested use is harmless
            assert inner is md
    assert m.dtype == torch.float32
    for k, v in m.state_dict().items():
        assert v.data_ptr() == before[k][0] and torch.equal(v, before[k][1]), k  # the very same CPU tensors
    with cache.on_device("meta") as md:  # a device move (buffers included) is undone as well
        assert all(t.device.type == "meta" for t in md.state_dict().values())
    for k, v in m.state_dict().items():
        assert v.device.type == "cpu" and v.data_ptr() == before[k][0], k

    encodes = []
    real_encode = type(m).encode_subjects
    monkeypatch.setattr(type(m), "encode_subjects", lambda self, x: encodes.append(len(x)) or real_encode(self, x))
    e1 = cache.subject_embeddings(release.st_path, [_img("red"), _img("blue")])
    assert e1.shape == (2, fixtures.EMBED_DIM) and e1.dtype == torch.float32
    e2 = cache.subject_embeddings(release.st_path, [_img("blue"), _img("green")])
    assert encodes == [2, 1]  # blue came from the cache
    torch.testing.assert_close(e2[0], e1[1])
    direct = m.encode_subjects(torch.stack([loader_preprocess(_img("green"))]))
    torch.testing.assert_close(e2[1], direct[0])
    cache.subject_embeddings(release.st_path, [_img("white"), _img("black")])
    assert len(cache._subjects) == 3  # LRU bound

    # a changed file is reloaded
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(open(release.st_path, "rb").read())
    cache.get(copy)
    assert len(loads) == 2 and cache.loaded_path == os.path.realpath(copy)
    os.utime(copy, ns=(1, 1))
    cache.get(copy)
    assert len(loads) == 3
    cache.unload()
    assert cache.model is None and not cache._subjects
    with pytest.raises(RuntimeError):
        with cache.on_device("cpu"):
            pass


def loader_preprocess(im):
    from lib_freediff.fastcomposer.preprocess import preprocess_image

    return preprocess_image(im)


def test_ddp_module_prefix_is_stripped(tmp_path, release):
    p = tmp_path / "ddp.bin"
    torch.save({"module." + k: v for k, v in release.state_dict.items()}, p)
    _same_weights(load_fastcomposer(p), load_fastcomposer(release.bin_path))
