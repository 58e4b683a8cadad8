"""Errors shared by every feature: each one names the parameter or file that is wrong."""


class FreeDiffError(ValueError):
    """A user-facing error.

    ``status_code``/``detail`` let the WebUI's API exception handler answer 422 with the message
    instead of a bare 500 (it reads both with ``vars(e)``, so they must be instance attributes).
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.status_code = 422
        self.detail = message


class ParamError(FreeDiffError):
    """A bad value for a named parameter of a feature (API field, UI control, infotext, preset)."""

    def __init__(self, feature: str, param: str, message: str):
        self.feature = feature
        self.param = param
        super().__init__(f"{feature}: parameter '{param}': {message}")


class ModelFileError(FreeDiffError):
    """A checkpoint or model file that is missing, truncated, or of the wrong layout."""

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")
