"""Forge's ui_components: InputAccordion is a factory over a hidden checkbox (``InputAccordionImpl``), in gradio 4.
Forge's gradio_extensions turns the ``_js=`` its code passes into gradio 4's ``js=``; the stand-in writes ``js=``."""

from functools import wraps

import gradio as gr
import gradio.component_meta

_create_or_modify_pyi = gradio.component_meta.create_or_modify_pyi


def _no_pyi_for_webui_components(component_class, class_name, events):
    # Forge's gradio_extensions: gradio 4 writes a .pyi beside a new component's module, unless the class opts out
    if not hasattr(component_class, "webui_do_not_create_gradio_pyi_thank_you"):
        _create_or_modify_pyi(component_class, class_name, events)


gradio.component_meta.create_or_modify_pyi = _no_pyi_for_webui_components


class FormComponent:
    webui_do_not_create_gradio_pyi_thank_you = True

    def get_expected_parent(self):
        return gr.components.Form


class ToolButton(gr.Button, FormComponent):
    @wraps(gr.Button.__init__)
    def __init__(self, value="", *args, elem_classes=None, **kwargs):
        elem_classes = elem_classes or []
        super().__init__(*args, elem_classes=["tool", *elem_classes], value=value, **kwargs)

    def get_block_name(self):
        return "button"


class FormRow(FormComponent, gr.Row):
    def get_block_name(self):
        return "row"


class InputAccordionImpl(gr.Checkbox):
    webui_do_not_create_gradio_pyi_thank_you = True
    global_index = 0

    def __init__(self, value=None, setup=False, **kwargs):
        if not setup:
            super().__init__(value=value, **kwargs)
            return
        self.accordion_id = kwargs.get("elem_id")
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordionImpl.global_index}"
            InputAccordionImpl.global_index += 1
        super().__init__(value=value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        # the WebUI's own script.js syncs the two; here a plain toggle keeps them together
        self.change(fn=None, js='function(checked){ const a = document.getElementById("' + self.accordion_id + '"); if (a && a.__freediffSync) a.__freediffSync(checked); }', inputs=[self])
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id, "label": kwargs.get("label", "Accordion"),
                                         "elem_classes": ["input-accordion"], "open": value})

    def extra(self):
        return gr.Column(elem_id=self.accordion_id + "-extra", elem_classes="input-accordion-extra", min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"


def InputAccordion(value=None, **kwargs):
    return InputAccordionImpl(value=value, setup=True, **kwargs)
