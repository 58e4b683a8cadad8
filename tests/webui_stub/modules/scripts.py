"""Script base class and the AlwaysOn part of ScriptRunner, as in v1.10.1."""

import os
from collections import namedtuple

from modules import errors

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        pass

    def post_sample(self, p, ps: PostSampleArgs, *args):
        pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def describe(self):
        return ""

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = 'img2img' if self.is_img2img else 'txt2img'
        tabname = f"{tabkind}_" if need_tabname else ""
        title = "".join(c for c in self.title().lower().replace(" ", "_") if c.isalnum() or c == "_")
        return f'script_{tabname}{title}_{item_id}'

    def before_hr(self, p, *args):
        pass


def basedir():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ScriptRunner:
    """The AlwaysOn scripts of one tab: UI args are laid out script after script, each call is guarded."""

    def __init__(self):
        self.alwayson_scripts = []
        self.inputs = [None]  # position 0 is the selectable-script index, as in the WebUI

    def add_alwayson(self, script, is_img2img, controls=None):
        script.is_img2img = is_img2img
        script.is_txt2img = not is_img2img
        script.alwayson = True
        script.args_from = len(self.inputs)
        if controls is None:
            controls = script.ui(is_img2img)
        script.controls = controls
        script.name = script.title().lower()
        self.inputs += list(controls)
        script.args_to = len(self.inputs)
        self.alwayson_scripts.append(script)
        return script

    def process_before_every_sampling(self, p, **kwargs):
        self._call("process_before_every_sampling", p, **kwargs)

    def _call(self, method, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, method)(p, *extra, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._call("before_process", p)

    def process(self, p):
        self._call("process", p)


    def before_process_batch(self, p, **kwargs):
        self._call("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call("process_batch", p, **kwargs)

    def postprocess_batch(self, p, images, **kwargs):
        self._call("postprocess_batch", p, images=images, **kwargs)

    def post_sample(self, p, ps):
        self._call("post_sample", p, ps)

    def postprocess_image(self, p, pp):
        self._call("postprocess_image", p, pp)

    def postprocess(self, p, processed):
        self._call("postprocess", p, processed)

    def before_hr(self, p):
        self._call("before_hr", p)

    def setup_scrips(self, p, *, is_ui=True):
        self._call("setup", p)
