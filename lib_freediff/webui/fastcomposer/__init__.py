"""FastComposer in the WebUI: ``models`` (the models/fastcomposer files, the model cache, the panel's model
buttons), ``layout`` (markers → token positions through the host's tokenizer), ``session`` (one generation's
hooks; the host's prompt path is its adapter's: ``a1111/fastcomposer.py``, ``forge/fastcomposer.py``). Importing
this package registers the feature's API contract and preset store."""

from lib_freediff.fastcomposer.loader import model_hash
from lib_freediff.fastcomposer.model import FEATURE
from lib_freediff.fastcomposer.params import (BUILTIN_PRESETS, FASTCOMPOSER_PARAMS, MAX_IMAGES, PRESET_PARAMS,
                                              collect_images, image_hash)
from lib_freediff.webui import features
from lib_freediff.webui.fastcomposer import layout, models, session
from lib_freediff.webui.fastcomposer.layout import subject_count
from lib_freediff.webui.fastcomposer.models import (CACHE, convert_model, default_model_choice, free_memory, list_models,
                                                    model_status, models_dir, resolve_model, setup_hint, setup_steps)
from lib_freediff.webui.fastcomposer.session import (FastComposerSession, before_hr, clear_cond_caches, postprocess,
                                                     process)

PRESET_FEATURE = features.Feature(PRESET_PARAMS, BUILTIN_PRESETS)


class _FastComposerFeature(features.Feature):
    """The API contract is the full parameter set; its preset store is the settings-only one."""

    def store(self):
        return PRESET_FEATURE.store()


FEATURE_SPEC = features.register(_FastComposerFeature(FASTCOMPOSER_PARAMS, BUILTIN_PRESETS))

__all__ = [
    "CACHE", "FASTCOMPOSER_PARAMS", "FEATURE", "FEATURE_SPEC", "MAX_IMAGES", "PRESET_FEATURE", "PRESET_PARAMS",
    "FastComposerSession", "before_hr", "clear_cond_caches", "collect_images", "convert_model",
    "default_model_choice", "free_memory", "image_hash", "layout", "list_models", "model_hash", "model_status",
    "models", "models_dir", "postprocess", "process", "resolve_model", "session", "setup_hint", "setup_steps",
    "subject_count",
]
