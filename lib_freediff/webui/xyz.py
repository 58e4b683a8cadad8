"""XYZ plot axes for the features' parameters (the built-in xyz_grid script is found at UI build time)."""

from __future__ import annotations

from modules import scripts

from lib_freediff.webui.overrides import set_override


def _xyz_module():
    for data in scripts.scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "xyz_grid"):
            return data.module
    return None


def add_axes(feature: str, param_set, names) -> bool:
    """Adds one axis per named parameter, labelled ``[Feature] label``; False if xyz_grid is absent."""
    xyz = _xyz_module()
    if xyz is None:
        return False
    labels = {opt.label for opt in xyz.axis_options}
    for name in names:
        param = param_set.by_name[name]
        label = f"[{feature}] {param.label or name}"
        if label in labels:
            continue
        apply = _applier(feature, name, param_set)
        if param.kind == "bool":
            xyz.axis_options.append(xyz.AxisOption(label, str, apply, choices=xyz.boolean_choice(reverse=True)))
        elif param.kind == "choice":
            xyz.axis_options.append(xyz.AxisOption(label, str, apply, choices=lambda p=param: [str(c) for c in p.choices]))
        else:
            xyz.axis_options.append(xyz.AxisOption(label, float if param.kind == "float" else int, apply))
    return True


def _applier(feature: str, name: str, param_set):
    def apply(p, x, xs):
        # validated when the generation starts, so a bad cell fails with the field's name
        set_override(p, feature, name, x)
    return apply
