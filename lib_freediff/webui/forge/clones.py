"""What the features put on Forge's per-pass objects: a callable that stays itself when a patcher clones its options,
and the record of one clone put in place of the pass's object, to put back."""

from __future__ import annotations


class KeptOnClone:
    """A callable put in a patcher's options: ``clone()`` deep-copies them, and every copy must stay this object."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo):
        return self


class Placed:
    """One clone a feature put on ``forge_objects`` in place of ``original``. ``restore`` puts the original back if the
    clone, or a later clone of it (another extension's patch on top), is still there: ``carries(obj)`` tells."""

    def __init__(self, objects, attr: str, original, clone, carries):
        self.objects, self.attr, self.original, self.clone, self.carries = objects, attr, original, clone, carries
        setattr(objects, attr, clone)

    def restore(self) -> None:
        current = getattr(self.objects, self.attr, None)
        if current is self.clone or (current is not None and self.carries(current)):
            setattr(self.objects, self.attr, self.original)
