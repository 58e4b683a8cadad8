"""Gradio pieces shared by the feature panels: controls from Param declarations, the presets row,
and infotext paste-back functions."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import gradio as gr

from lib_freediff.errors import FreeDiffError
from lib_freediff.params import Param, ParamSet
from lib_freediff.webui.features import Feature


def control(param: Param, elem_id: str, **kwargs) -> gr.components.Component:
    """The gradio control of one parameter, labelled and bounded as its declaration says."""
    common = dict(label=param.label or param.name, elem_id=elem_id, **kwargs)
    if param.info:
        common.setdefault("info", param.info)
    if param.kind == "bool":
        return gr.Checkbox(value=param.default, **common)
    if param.kind in ("int", "float"):
        return gr.Slider(minimum=param.minimum, maximum=param.maximum, step=param.step or (1 if param.kind == "int" else 0.01), value=param.default, **common)
    if param.kind == "choice":
        choices = list(param.choices or [])
        if len(choices) <= 3 and not param.open_choices:
            return gr.Radio(choices=choices, value=param.default, **common)
        return gr.Dropdown(choices=choices, value=param.default, allow_custom_value=param.open_choices, **common)
    return gr.Textbox(value=param.default, **common)


def infotext_fields(param_set: ParamSet, components: dict[str, Any]) -> list[tuple[Any, Callable]]:
    """(component, function) pairs for ``Script.infotext_fields``: values come from the feature's compact key."""
    key = param_set.infotext_key

    def reader(name: str):
        def read(params: dict):
            if key not in params:
                # pasting an infotext without this feature turns it off and leaves the rest alone
                return False if name == "enabled" else None
            try:
                return param_set.parse_infotext(params[key])[name]
            except FreeDiffError as e:
                warn(f"Pasted infotext: {e}")
                return None
        return read

    return [(component, reader(name)) for name, component in components.items()]


def warn(message: str) -> None:
    print(f"[sd-webui-freediff] {message}")
    try:
        gr.Warning(message)
    except Exception:
        pass  # outside an event handler there is no toast to show


def preset_row(feature: Feature, components: Sequence[Any], elem_prefix: str) -> dict[str, Any]:
    """Saved presets: dropdown + Apply / Save / Delete, and a status line. ``components`` follow the
    parameter order; Apply sets them, Save stores their current values."""
    names = feature.param_set.names()
    with gr.Row(elem_id=f"{elem_prefix}_presets", variant="compact"):
        dropdown = gr.Dropdown(label="Saved presets", choices=_preset_choices(feature), value=None, elem_id=f"{elem_prefix}_preset_select", scale=3)
        refresh = gr.Button("\U0001f504", elem_id=f"{elem_prefix}_preset_refresh", scale=0, min_width=40)
        apply = gr.Button("Apply", elem_id=f"{elem_prefix}_preset_apply", scale=1, min_width=60)
        delete = gr.Button("Delete", elem_id=f"{elem_prefix}_preset_delete", scale=1, min_width=60)
    with gr.Row(variant="compact"):
        name_box = gr.Textbox(label="Save current settings as", placeholder="preset name", elem_id=f"{elem_prefix}_preset_name", scale=3)
        save = gr.Button("Save", elem_id=f"{elem_prefix}_preset_save", scale=1, min_width=60)
    status = gr.Markdown("", elem_id=f"{elem_prefix}_preset_status")

    def do_apply(name):
        if not name:
            return [gr.update() for _ in components] + ["Choose a preset first."]
        try:
            values = feature.store().get(name)
        except FreeDiffError as e:
            return [gr.update() for _ in components] + [f"**Error:** {e}"]
        return [gr.update(value=values[n]) for n in names] + [f"Applied preset **{name}**."]

    def do_save(name, *current):
        try:
            feature.store().save(name, dict(zip(names, current)))
        except FreeDiffError as e:
            return gr.update(), f"**Error:** {e}"
        clean = name.strip()
        return gr.update(choices=_preset_choices(feature), value=clean), f"Saved preset **{clean}**."

    def do_delete(name):
        if not name:
            return gr.update(), "Choose a preset first."
        try:
            feature.store().delete(name)
        except FreeDiffError as e:
            return gr.update(), f"**Error:** {e}"
        return gr.update(choices=_preset_choices(feature), value=None), f"Deleted preset **{name}**."

    apply.click(do_apply, inputs=[dropdown], outputs=[*components, status])
    save.click(do_save, inputs=[name_box, *components], outputs=[dropdown, status])
    delete.click(do_delete, inputs=[dropdown], outputs=[dropdown, status])
    refresh.click(lambda: gr.update(choices=_preset_choices(feature)), outputs=[dropdown])
    return {"dropdown": dropdown, "apply": apply, "save": save, "delete": delete, "name": name_box, "status": status}


def _preset_choices(feature: Feature) -> list[str]:
    return feature.store().names()
