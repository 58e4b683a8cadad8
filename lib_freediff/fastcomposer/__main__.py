"""Command line: FastComposer's release file → a checkpoint the WebUI can load (its fine-tuned U-Net).

From the WebUI's folder, with the WebUI's Python (``venv/bin/python``; Windows: ``.\venv\Scripts\python``),
the package folder run as a program (``/`` works in the paths on Windows too):

    python extensions/sd-webui-freediff/lib_freediff/fastcomposer convert SRC [DST] [--dtype fp16|bf16|fp32|keep] [--force]
    python extensions/sd-webui-freediff/lib_freediff/fastcomposer SRC [DST] ...        (same: "convert" is the default)
    python extensions/sd-webui-freediff/lib_freediff/fastcomposer safetensors SRC DST  (a .safetensors copy of the .bin)

or, from the extension's folder, ``python -m lib_freediff.fastcomposer …``. ``SRC`` is the release's ``pytorch_model.bin``
(or a .safetensors copy). ``DST`` is a ``.safetensors`` file or a folder (default: ``models/Stable-diffusion``
of the WebUI this extension is installed in, when it can be found, else the current folder); in a folder
the file is named by ``checkpoint_name_for(SRC)``. The write is atomic. Exit status 0 on success, 1 on a
bad file (the message names it), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

if not __package__:  # run as a folder: put the extension's folder, not this package's, first on the path
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        PROG = f"python {os.path.relpath(os.path.dirname(os.path.abspath(__file__)))}"
    except ValueError:  # another drive (Windows)
        PROG = f"python {os.path.dirname(os.path.abspath(__file__))}"
else:
    PROG = "python -m lib_freediff.fastcomposer"

DTYPES = ("fp16", "bf16", "fp32", "keep")


def checkpoint_name_for(src) -> str:
    """File name of the WebUI checkpoint written from ``src``: ``fastcomposer-<stem>.safetensors``
    (``<stem>-webui.safetensors`` when the stem already says fastcomposer)."""
    stem = os.path.splitext(os.path.basename(os.fspath(src)))[0] or "model"
    if "fastcomposer" in stem.lower():
        return f"{stem}-webui.safetensors"
    return f"fastcomposer-{stem}.safetensors"


def _torch_dtype(name: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "keep": None}[name]


def _default_checkpoint_dir() -> str:
    """``<webui>/models/Stable-diffusion`` when this extension sits in ``<webui>/extensions/``."""
    here = os.path.dirname(os.path.abspath(__file__))
    ext_root = os.path.dirname(os.path.dirname(here))
    webui = os.path.dirname(os.path.dirname(ext_root))
    candidate = os.path.join(webui, "models", "Stable-diffusion")
    if os.path.basename(os.path.dirname(ext_root)) == "extensions" and os.path.isdir(candidate):
        return candidate
    return os.getcwd()


def output_path(src, dst=None) -> str:
    dst = os.fspath(dst) if dst else _default_checkpoint_dir()
    if os.path.isdir(dst) or dst.endswith(("/", os.sep)):
        return os.path.join(dst, checkpoint_name_for(src))
    return dst


def convert(src, dst=None, *, dtype: str = "fp16", force: bool = False) -> str:
    """Writes the WebUI checkpoint; returns its path. Raises FileExistsError unless ``force``."""
    from lib_freediff.fastcomposer.convert import write_webui_checkpoint

    out = output_path(src, dst)
    if os.path.exists(out) and not force:
        raise FileExistsError(out)
    return write_webui_checkpoint(src, out, dtype=_torch_dtype(dtype))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "convert"
    if argv and argv[0] in ("convert", "safetensors"):
        command = argv.pop(0)
    ap = argparse.ArgumentParser(
        prog=PROG + ("" if command == "convert" else f" {command}"),
        description=("Write FastComposer's U-Net, text encoder and VAE as an SD1.5 checkpoint the WebUI loads."
                     if command == "convert" else "Write a .safetensors copy of FastComposer's pytorch_model.bin."))
    ap.add_argument("src", help="FastComposer release file (pytorch_model.bin or a .safetensors copy)")
    ap.add_argument("dst", nargs="?" if command == "convert" else None,
                    help="output .safetensors file or folder" + (" (default: the WebUI's models/Stable-diffusion)" if command == "convert" else ""))
    ap.add_argument("--dtype", choices=DTYPES, default="fp16" if command == "convert" else "keep",
                    help="floating-point type of the written tensors (keep: as in the source)")
    ap.add_argument("--force", action="store_true", help="replace an existing output file")
    args = ap.parse_args(argv)

    from lib_freediff.errors import FreeDiffError

    try:
        if command == "convert":
            out = convert(args.src, args.dst, dtype=args.dtype, force=args.force)
            print(f"wrote {out}\nSelect it in the WebUI's Stable Diffusion checkpoint dropdown (refresh the list first).")
        else:
            from lib_freediff.fastcomposer.loader import convert_bin_to_safetensors

            out = args.dst
            if os.path.isdir(out):
                out = os.path.join(out, os.path.splitext(os.path.basename(args.src))[0] + ".safetensors")
            if not out.lower().endswith(".safetensors"):
                print(f"error: {out}: the output must end in .safetensors", file=sys.stderr)
                return 2
            if os.path.exists(out) and not args.force:
                raise FileExistsError(out)
            convert_bin_to_safetensors(args.src, out, dtype=_torch_dtype(args.dtype))
            print(f"wrote {out}")
    except FileExistsError as e:
        print(f"error: {e}: exists already (use --force to replace it)", file=sys.stderr)
        return 1
    except FreeDiffError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
