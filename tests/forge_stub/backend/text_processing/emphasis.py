"""Forge's emphasis modes: an object per encode whose ``after_transformers`` weights ``z`` by the multipliers."""

from modules.sd_hijack_clip import apply_emphasis


class Emphasis:
    name = "Base"
    description = ""

    def after_transformers(self):
        self.z = apply_emphasis(self.z, self.multipliers, self.name)


class EmphasisNone(Emphasis):
    name = "None"


class EmphasisIgnore(Emphasis):
    name = "Ignore"


class EmphasisOriginal(Emphasis):
    name = "Original"


class EmphasisOriginalNoNorm(EmphasisOriginal):
    name = "No norm"


options = [EmphasisNone, EmphasisIgnore, EmphasisOriginal, EmphasisOriginalNoNorm]


def get_current_option(emphasis_option_name):
    return next(iter([x for x in options if x.name == emphasis_option_name]), EmphasisOriginal)
