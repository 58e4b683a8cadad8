"""FastComposer's model files in the WebUI: the ``models/fastcomposer`` folder, resolving a model name,
the loaded-model cache, file hashes, the loaded SD model's checks, and the panel's model buttons."""

from __future__ import annotations

import os

from modules import devices, paths, shared

from lib_freediff.errors import FreeDiffError, ModelFileError, ParamError
from lib_freediff.fastcomposer.convert import is_fastcomposer_unet
from lib_freediff.fastcomposer.loader import FastComposerCache, model_hash
from lib_freediff.fastcomposer.model import FEATURE
from lib_freediff.webui import host

MODELS_SUBDIR = "fastcomposer"
MODEL_EXTENSIONS = (".bin", ".safetensors")
MODEL_PAGE = "https://huggingface.co/mit-han-lab/fastcomposer"
RELEASE_FILE = "pytorch_model.bin"

CACHE = FastComposerCache()


def models_dir() -> str:
    return os.path.join(paths.models_path, MODELS_SUBDIR)


def display_path(path: str) -> str:
    """``path`` as users know it, never the server's layout: relative to the WebUI's data folder
    (``models/fastcomposer/x.bin``), or to a ``--models-dir`` outside it (``<models-dir>/fastcomposer/x.bin``)."""
    for root, prefix in ((paths.data_path, ""), (paths.models_path, "<models-dir>/")):
        try:
            rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        except ValueError:  # another drive (Windows)
            continue
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return prefix + rel.replace(os.sep, "/")
    return os.path.basename(path)


def model_label(name: str) -> str:
    """A model file of the folder as users know it: ``models/fastcomposer/<name>``."""
    return f"{display_path(models_dir())}/{name}"


def model_file_message(error: FreeDiffError, name: str, path: str) -> str:
    """``error``'s message with the model file ``name`` (at ``path``) named by ``model_label``."""
    if not isinstance(error, ModelFileError) or os.path.realpath(error.path) != os.path.realpath(path):
        return str(error)
    return f"{model_label(name)}: {error.reason.replace(error.path, model_label(name))}"


def list_models() -> list[str]:
    """Model files under models/fastcomposer (relative names with '/'), sorted. The folder is created when
    missing (install.py makes it too, but cannot see a ``--models-dir`` given on the command line)."""
    root = models_dir()
    try:
        os.makedirs(root, exist_ok=True)
    except OSError:
        pass  # a read-only models folder: listed as empty, and the panel says where the file goes
    found = []
    if os.path.isdir(root):
        for folder, _dirs, files in os.walk(root):
            for f in files:
                if f.lower().endswith(MODEL_EXTENSIONS) and not f.startswith("."):
                    found.append(os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/"))
    return sorted(found, key=str.lower)


def setup_steps() -> str:
    """The set-up, in one place: what the panel shows while models/fastcomposer holds no model file."""
    folder = display_path(models_dir())
    return (f"**FastComposer needs its model file, once:**\n\n"
            f"1. Download `{RELEASE_FILE}` from the authors' model page, [mit-han-lab/fastcomposer]({MODEL_PAGE}) "
            f"(*Files and versions*).\n"
            f"2. Put it into `{folder}/` and click 🔄 beside **FastComposer model**.\n"
            f"3. Click **Create WebUI checkpoint**, then select `fastcomposer-pytorch_model` in the Stable Diffusion "
            f"checkpoint dropdown (its fine-tuned U-Net: without it the subjects will not look like the photos).\n"
            f"4. Write `img` after each subject's noun (`a man img and a woman img at the beach`) and give one "
            f"image per marked noun, in order.")


def setup_hint() -> str:
    """The panel's first status line: the set-up steps while there is no model file, else nothing."""
    return "" if list_models() else setup_steps()


def resolve_model(name: str) -> tuple[str, str]:
    """(name, absolute path) of a model file; '' means the first one. Only files of the folder count."""
    names = list_models()
    if not names:
        raise ParamError(FEATURE, "model", f"no FastComposer model in {display_path(models_dir())}: download "
                                           f"{RELEASE_FILE} from {MODEL_PAGE} into it (or a .safetensors copy); the "
                                           "panel shows the set-up steps")
    name = (name or "").strip()
    if not name:
        name = names[0]
    if name not in names:
        matches = [n for n in names if os.path.basename(n) == name or os.path.splitext(os.path.basename(n))[0] == name]
        if len(matches) != 1:
            raise ParamError(FEATURE, "model", f"{name!r} is not a model in {display_path(models_dir())}; "
                                               f"available: {', '.join(names)}")
        name = matches[0]
    return name, os.path.join(models_dir(), *name.split("/"))


def default_model_choice() -> str:
    names = list_models()
    return names[0] if names else ""


def checkpoints_dir() -> str:
    return getattr(shared.cmd_opts, "ckpt_dir", None) or os.path.join(paths.models_path, "Stable-diffusion")


def file_hash(path: str, name: str) -> str:
    """sha256 of the model file, 10 digits: through the WebUI's hash cache (cache.json, kept across
    restarts) when there is one, else computed once per process; "none" under ``--no-hashing``."""
    try:
        from modules import hashes
    except ImportError:
        return model_hash(path)
    digest = hashes.sha256(path, f"{MODELS_SUBDIR}/{name}")
    return digest[:10] if digest else "none"


# ----------------------------------------------------------------------------------------------------
# checks of the loaded WebUI model
# ----------------------------------------------------------------------------------------------------

def unet_of(sd_model):
    return host.current().unet(sd_model)


FAMILY_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sd3": "SD3"}


def loaded_family(sd_model) -> str:
    """The loaded checkpoint's family as users name it: by the model's flags (both hosts set them), else by its U-Net
    (one the host cannot tell counts as SD1: the text encoder's check decides)."""
    for attr, family in (("is_sdxl", "SDXL"), ("is_sd3", "SD3"), ("is_sd2", "SD2")):
        if getattr(sd_model, attr, False):
            return family
    family = host.current().family(sd_model)
    return FAMILY_NAMES.get(family or "sd1", str(family).upper())


def model_title(sd_model) -> str:
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return getattr(info, "short_title", None) or getattr(info, "title", None) or "the loaded model"


def check_sd_model(sd_model) -> None:
    """Refuses anything but an SD1.x model (the host's text-encoder checks follow, see ``fastcomposer_text``)."""
    if sd_model is None:
        raise FreeDiffError(f"{FEATURE}: no Stable Diffusion model is loaded", feature=FEATURE)
    # FastComposer's model (SD1.5) cannot serve the loaded checkpoint: the `model` field is the one at odds
    family = loaded_family(sd_model)
    if family != "SD1":
        raise ParamError(FEATURE, "model", f"FastComposer's model needs an SD1.5 model loaded; the loaded checkpoint "
                                           f"({model_title(sd_model)}) is {family}. Load the FastComposer checkpoint "
                                           "(panel: 'Create WebUI checkpoint') or another SD1.5 model.")


def has_fastcomposer_unet(sd_model, path: str) -> bool:
    """Whether the loaded U-Net is the one of the FastComposer file at ``path``."""
    try:
        return is_fastcomposer_unet(unet_of(sd_model), path)
    except FreeDiffError:  # e.g. a file that holds only the image encoder and post-fuse module
        return False


# ----------------------------------------------------------------------------------------------------
# the panel's model buttons
# ----------------------------------------------------------------------------------------------------

def model_status(name: str | None = None) -> str:
    """One line of Markdown for the panel: is the loaded WebUI model FastComposer's U-Net?"""
    sd_model = shared.sd_model
    if not list_models():
        return setup_steps()
    try:
        mname, path = resolve_model(name or "")
    except ParamError as e:
        return f"⚠️ {e.args[0].split(': ', 2)[-1]}"
    if sd_model is None:
        return "No Stable Diffusion model is loaded."
    family = loaded_family(sd_model)
    if family != "SD1":
        return f"⚠️ The loaded model ({model_title(sd_model)}) is {family}: FastComposer needs SD1.5, generation will be refused."
    try:
        ok = is_fastcomposer_unet(unet_of(sd_model), path)
    except FreeDiffError as e:
        return f"⚠️ {model_file_message(e, mname, path)}"
    if ok:
        return f"✅ The loaded WebUI model ({model_title(sd_model)}) has FastComposer's U-Net ({mname})."
    return (f"⚠️ The loaded WebUI model ({model_title(sd_model)}) is **not** FastComposer's U-Net: subjects will "
            f"not look like the images. Click **Create WebUI checkpoint** and select "
            f"`{os.path.splitext(_checkpoint_name(mname))[0]}` in the Stable Diffusion checkpoint dropdown.")


def _checkpoint_name(model_name: str) -> str:
    from lib_freediff.fastcomposer.__main__ import checkpoint_name_for

    return checkpoint_name_for(model_name)


def convert_model(name: str | None = None) -> str:
    """Writes the WebUI checkpoint of a FastComposer file into models/Stable-diffusion (the panel's button)."""
    from lib_freediff.fastcomposer.convert import write_webui_checkpoint

    try:
        mname, path = resolve_model(name or "")
    except FreeDiffError as e:
        return f"**Error:** {e}"
    out = os.path.join(checkpoints_dir(), _checkpoint_name(mname))
    if os.path.exists(out):
        return (f"`{out}` exists already: select `{os.path.splitext(os.path.basename(out))[0]}` in the Stable "
                "Diffusion checkpoint dropdown (delete the file to write it again).")
    try:
        write_webui_checkpoint(path, out)
    except FreeDiffError as e:
        return f"**Error:** {model_file_message(e, mname, path)}"
    try:  # let the WebUI's checkpoint list see the new file
        from modules import sd_models

        sd_models.list_models()
    except Exception:
        pass
    size = os.path.getsize(out) / 2 ** 30
    return (f"Wrote `{out}` ({size:.2f} GiB). Select `{os.path.splitext(os.path.basename(out))[0]}` in the Stable "
            "Diffusion checkpoint dropdown (🔄 refreshes the list).")


def free_memory() -> str:
    CACHE.unload()
    devices.torch_gc()
    return "Freed the FastComposer model and its cached subject embeddings (loaded again on the next use)."

