"""The checkpoints the WebUI knows, by every name a request may use (v1.10.1's ``checkpoint_aliases``)."""


class CheckpointInfo:
    def __init__(self, filename, name=None):
        self.filename = filename
        self.name = name or filename
        self.title = self.name


checkpoints_list = {}
checkpoint_aliases = {}


def list_models():
    pass
