"""Errors shared by every feature: each one names the parameter or file that is wrong."""

from __future__ import annotations


class FreeDiffError(ValueError):
    """A user-facing error.

    ``status_code``/``detail`` let the WebUI's API exception handler answer 422 with the message
    instead of a bare 500 (it reads both with ``vars(e)``, so they must be instance attributes).
    """

    def __init__(self, message: str, *, feature: str | None = None):
        super().__init__(message)
        self.status_code = 422
        self.detail = message
        if feature is not None:
            self.feature = feature


class ParamError(FreeDiffError):
    """A bad value for a named parameter of a feature (API field, UI control, infotext, preset)."""

    def __init__(self, feature: str, param: str, message: str):
        self.param = param
        super().__init__(f"{feature}: parameter '{param}': {message}", feature=feature)


class ModelFileError(FreeDiffError):
    """A checkpoint or model file that is missing, truncated, or of the wrong layout."""

    def __init__(self, path, message: str):
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")
