"""InputAccordion and friends with the v1.10.1 behaviour: the accordion is a hidden checkbox input."""

import gradio as gr


class FormComponent:
    def get_expected_parent(self):
        return gr.components.Form

from gradio.events import Dependency

class ToolButton(FormComponent, gr.Button):
    def __init__(self, *args, **kwargs):
        classes = kwargs.pop("elem_classes", [])
        super().__init__(*args, elem_classes=["tool", *classes], **kwargs)

    def get_block_name(self):
        return "button"


class FormRow(FormComponent, gr.Row):
    def get_block_name(self):
        return "row"


class InputAccordion(gr.Checkbox):
    """Returns True when open. A hidden checkbox carries the value; the accordion follows it."""

    global_index = 0

    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get('elem_id')
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
            InputAccordion.global_index += 1
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        # the WebUI's own script.js syncs the two; here a plain toggle keeps them together
        self.change(fn=None, _js='function(checked){ const a = document.getElementById("' + self.accordion_id + '"); if (a && a.__freediffSync) a.__freediffSync(checked); }', inputs=[self])
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id, "label": kwargs.get('label', 'Accordion'), "elem_classes": ['input-accordion'], "open": value})

    def extra(self):
        return gr.Column(elem_id=self.accordion_id + '-extra', elem_classes='input-accordion-extra', min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"