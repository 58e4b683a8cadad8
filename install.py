"""Run by the WebUI at start-up. sd-webui-freediff needs nothing the WebUI does not ship (torch, gradio,
transformers, safetensors), so it installs nothing and never touches torch; it only says what is missing."""

import importlib.util

for package, needed_for in (("transformers", "FastComposer"), ("safetensors", "FastComposer's .safetensors files")):
    if importlib.util.find_spec(package) is None:
        print(f"[sd-webui-freediff] '{package}' is missing from this WebUI environment; {needed_for} will not be available.")
