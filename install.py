"""Run by the WebUI at start-up (with its Python, the WebUI's folder on PYTHONPATH). sd-webui-freediff needs nothing
the WebUI does not ship (torch, gradio, transformers, safetensors), so it installs nothing and never touches torch;
it creates the folder FastComposer's model goes in, ``models/fastcomposer/``, and says what is missing."""

import importlib.util
import os


def models_path():
    """The WebUI's models folder (``--models-dir`` / ``--data-dir`` as given in COMMANDLINE_ARGS), else the one
    beside the ``extensions/`` folder this extension sits in; None when neither can be told."""
    try:
        from modules import paths_internal

        return paths_internal.models_path
    except Exception:
        extensions = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.basename(extensions) != "extensions":
            return None
        return os.path.join(os.path.dirname(extensions), "models")


folder = models_path()
if folder is not None:
    try:
        os.makedirs(os.path.join(folder, "fastcomposer"), exist_ok=True)
    except OSError as e:
        print(f"[sd-webui-freediff] could not create {os.path.join(folder, 'fastcomposer')}: {e}")

for package, needed_for in (("transformers", "FastComposer"), ("safetensors", "FastComposer's .safetensors files")):
    if importlib.util.find_spec(package) is None:
        print(f"[sd-webui-freediff] '{package}' is missing from this WebUI environment; {needed_for} will not be available.")
