"""Forge's prompt-attention parser: A1111's (the stand-in's), with the emphasis mode passed in ("None" reads the line
literally)."""

from modules.sd_hijack_clip import parse_prompt_attention as parse_a1111


def parse_prompt_attention(text, emphasis):
    if emphasis == "None":
        return [[text, 1.0]]
    return parse_a1111(text)
