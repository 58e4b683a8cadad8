"""Callbacks as in v1.10.1: registration by category, dispatch catches and reports exceptions."""

import inspect
import os
from collections import namedtuple

from modules import errors

ScriptCallback = namedtuple("ScriptCallback", ["script", "callback", "name"])

callback_map = {name: [] for name in (
    "callbacks_app_started", "callbacks_model_loaded", "callbacks_ui_settings", "callbacks_cfg_denoiser",
    "callbacks_cfg_denoised", "callbacks_cfg_after_cfg", "callbacks_before_ui", "callbacks_script_unloaded",
    "callbacks_infotext_pasted", "callbacks_before_image_saved",
)}


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


def report_exception(c, job):
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


def add_callback(callbacks, fun, *, name=None, category='unknown', filename=None):
    if filename is None:
        stack = [x for x in inspect.stack() if x.filename != __file__]
        filename = stack[0].filename if stack else 'unknown file'
    callbacks.append(ScriptCallback(filename, fun, f"{os.path.basename(filename)}/{category}/{name}"))


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def remove_callbacks_for_function(callback_func):
    for callback_list in callback_map.values():
        for c in [c for c in callback_list if c.callback == callback_func]:
            callback_list.remove(c)


def _dispatch(key, *args):
    for c in list(callback_map[key]):
        try:
            c.callback(*args)
        except Exception:
            report_exception(c, key)


def app_started_callback(demo, app):
    _dispatch("callbacks_app_started", demo, app)


def model_loaded_callback(sd_model):
    _dispatch("callbacks_model_loaded", sd_model)


def ui_settings_callback():
    _dispatch("callbacks_ui_settings")


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _dispatch("callbacks_cfg_denoiser", params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    _dispatch("callbacks_cfg_denoised", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _dispatch("callbacks_cfg_after_cfg", params)


def before_ui_callback():
    _dispatch("callbacks_before_ui")


def script_unloaded_callback():
    _dispatch("callbacks_script_unloaded")


def infotext_pasted_callback(infotext: str, params):
    _dispatch("callbacks_infotext_pasted", infotext, params)


def on_app_started(callback, *, name=None):
    add_callback(callback_map['callbacks_app_started'], callback, name=name, category='app_started')


def on_model_loaded(callback, *, name=None):
    add_callback(callback_map['callbacks_model_loaded'], callback, name=name, category='model_loaded')


def on_ui_settings(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_settings'], callback, name=name, category='ui_settings')


def on_cfg_denoiser(callback, *, name=None):
    add_callback(callback_map['callbacks_cfg_denoiser'], callback, name=name, category='cfg_denoiser')


def on_cfg_denoised(callback, *, name=None):
    add_callback(callback_map['callbacks_cfg_denoised'], callback, name=name, category='cfg_denoised')


def on_cfg_after_cfg(callback, *, name=None):
    add_callback(callback_map['callbacks_cfg_after_cfg'], callback, name=name, category='cfg_after_cfg')


def on_before_ui(callback, *, name=None):
    add_callback(callback_map['callbacks_before_ui'], callback, name=name, category='before_ui')


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map['callbacks_script_unloaded'], callback, name=name, category='script_unloaded')


def on_infotext_pasted(callback, *, name=None):
    add_callback(callback_map['callbacks_infotext_pasted'], callback, name=name, category='infotext_pasted')
