import types


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None, refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False, category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.infotext = infotext

    def info(self, info):
        self.comment_after = info
        return self

    def needs_reload_ui(self):
        return self


class Options:
    def __init__(self):
        self.__dict__["data"] = {
            "batch_cond_uncond": True,
            "img2img_fix_steps": False,
            "comma_padding_backtrack": 20,
            "emphasis": "Original",
            "CLIP_stop_at_last_layers": 1,
        }
        self.__dict__["data_labels"] = {}

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def get_default(self, key):
        info = self.data_labels.get(key)
        return info.default if info else None

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value


class State:
    def __init__(self):
        self.reset()

    def reset(self):
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.job_count = 0
        self.sampling_step = 0
        self.sampling_steps = 0

    def interrupt(self):
        self.interrupted = True


opts = Options()
state = State()
cmd_opts = types.SimpleNamespace(data_dir=None, api=True, no_prompt_history=True)
sd_model = None
total_tqdm = types.SimpleNamespace(update=lambda: None)
device = "cpu"
