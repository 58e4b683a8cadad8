"""Per-generation state of each feature and its guaranteed cleanup.

A feature attaches hooks in ``process`` and removes them in ``postprocess``. When a generation raises
instead, postprocess never runs; the WebUI still closes ``p`` (``with closing(p)`` in the UI and API
paths), so the session also ends there, and any session still alive when the next generation starts
is ended first. Only one generation runs at a time in the WebUI.
"""

from __future__ import annotations

import traceback
from typing import Callable, Protocol

from modules import script_callbacks

from lib_freediff.errors import FreeDiffError
from lib_freediff.webui import diagnostics, host


class Session(Protocol):
    def close(self) -> None: ...

    def on_cfg_denoiser(self, params) -> None: ...


_sessions: dict[str, Session] = {}
_CLOSE_MARK = "_freediff_close_wrapped"


def start(feature: str, p, session: Session) -> Session:
    """Makes ``session`` the live session of ``feature`` for generation ``p`` (ending any stale one)."""
    end(feature)
    _sessions[feature] = session
    _hook_close(p)
    return session


def get(feature: str):
    return _sessions.get(feature)


def call(feature: str, method: str, *args) -> None:
    """Calls ``method`` of the feature's live session, if there is one."""
    session = _sessions.get(feature)
    if session is not None:
        getattr(session, method)(*args)


def end(feature: str) -> None:
    session = _sessions.pop(feature, None)
    if session is not None:
        try:
            session.close()
        except Exception:
            traceback.print_exc()


def end_all() -> None:
    for feature in list(_sessions):
        end(feature)


def _hook_close(p) -> None:
    """Ends every session when ``p.close()`` runs (the WebUI's ``closing(p)``, also after an exception)."""
    if getattr(p, _CLOSE_MARK, False):
        return
    original = p.close

    def close_and_end_sessions(*args, **kwargs):
        try:
            failed = bool(_sessions)  # postprocess ends every session: one left means the generation raised
            end_all()
            if failed:  # what other extensions leave attached when a generation raises
                try:
                    host.current().after_failure(p)
                except Exception:
                    traceback.print_exc()
        finally:
            return original(*args, **kwargs)

    # an attribute of this one processing object: nothing global is patched
    p.close = close_and_end_sessions
    setattr(p, _CLOSE_MARK, True)


def on_cfg_denoiser(params) -> None:
    for feature, session in list(_sessions.items()):
        with diagnostics.timed_callback(feature):
            session.on_cfg_denoiser(params)


_HTTP_CLASSES: dict[type, type] = {}


def http_error(error: FreeDiffError) -> FreeDiffError:
    """``error`` as an instance of a subclass of both its own class and FastAPI's ``HTTPException``.

    Raised inside a generation, it reaches API clients as a 4xx in every stack: the WebUI registers a handler
    for ``HTTPException`` that FastAPI runs in its innermost exception middleware, at the endpoint, so the
    error is answered there, before starlette's ``BaseHTTPMiddleware`` (under anyio 4) would wrap it in an
    ``ExceptionGroup`` that the WebUI's own middleware answers with a bare 500. The class name, the message
    and the fields (``feature``, ``param``) stay those of ``error``, as the UI shows ``Type: message``.
    """
    try:
        from fastapi.exceptions import HTTPException
    except ImportError:  # no FastAPI (a host without the API): the plain error is all there is
        return error
    if isinstance(error, HTTPException):
        return error
    cls = type(error)
    http_cls = _HTTP_CLASSES.get(cls)
    if http_cls is None:
        http_cls = _HTTP_CLASSES[cls] = type(cls.__name__, (cls, HTTPException), {
            "__module__": cls.__module__, "__str__": BaseException.__str__, "__repr__": BaseException.__repr__})
    converted = http_cls.__new__(http_cls)
    converted.args = error.args
    converted.__dict__.update(vars(error))
    converted.headers = None
    # the WebUI's error answer carries vars(e)["body"]: the feature and field, for clients to read
    converted.body = {key: value for key in ("feature", "param") if (value := getattr(error, key, None))}
    return converted


class RefusalGate:
    """Stops a generation with a clear error before any model work.

    The WebUI catches and only prints exceptions from script methods, so a bad API value would be
    ignored silently; a forward pre-hook on the text encoder and U-Net raises the error instead, and
    the API answers 422 with it (see :func:`http_error`).
    """

    def __init__(self, sd_model, error: FreeDiffError):
        self.error = error
        self._handles = []
        for module in host.current().gated_modules(sd_model):
            self._handles.append(module.register_forward_pre_hook(self._refuse))

    def _refuse(self, module, args):
        raise http_error(self.error)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def on_cfg_denoiser(self, params) -> None:
        pass


def enabled_peer(p, peers) -> str | None:
    """The title of another extension's AlwaysOn script in ``peers`` (title → index of its 'enabled' argument)
    that is on in generation ``p``, or None."""
    runner = getattr(p, "scripts", None)
    args = list(getattr(p, "script_args", None) or [])
    for script in getattr(runner, "alwayson_scripts", None) or []:
        try:
            title = script.title()
        except Exception:
            continue
        index = peers.get(title)
        if index is None or script.args_from is None:
            continue
        position = script.args_from + index
        value = args[position] if position < len(args) else None
        if isinstance(value, dict):  # an API caller's named form
            value = value.get("enabled")
        if value is True or (isinstance(value, str) and value.lower() == "true"):
            return title
    return None


def check_model(feature: str, p, family: str | None) -> None:
    """Refuses ``feature`` where it cannot act (host, or a checkpoint of ``family``), so that it never runs as if it
    were on."""
    adapter = host.current()
    reason = adapter.refusal(feature, p.sd_model, family)
    if reason:
        raise FreeDiffError(f"{feature} cannot run on {adapter.name}: {reason}", feature=feature)


def refuse(feature: str, p, error: FreeDiffError) -> None:
    """Reports ``error`` and makes the current generation fail with it."""
    print(f"[sd-webui-freediff] {error}")
    start(f"{feature}/refusal", p, RefusalGate(p.sd_model, error))


def guarded(feature: str, p, action: Callable[[], None]) -> None:
    """Runs ``action``; an error from it refuses the generation instead of being swallowed by the WebUI (which only
    prints it and would run the generation with the feature half set up). An unexpected one is refused too, with its
    traceback printed, and the feature's session ended."""
    try:
        action()
    except FreeDiffError as error:
        refuse(feature, p, error)
    except Exception as error:
        traceback.print_exc()
        end(feature)
        refuse(feature, p, FreeDiffError(f"{feature} could not be set up ({type(error).__name__}: {error}); the "
                                         "generation is stopped rather than run without it", feature=feature))


def register_callbacks() -> None:
    """Called at each (re)load of the script files: the WebUI clears callbacks before reloading."""
    script_callbacks.remove_callbacks_for_function(on_cfg_denoiser)
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="freediff")
    script_callbacks.remove_callbacks_for_function(end_all)
    script_callbacks.on_script_unloaded(end_all, name="freediff")
