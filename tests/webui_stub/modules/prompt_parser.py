"""The parts of v1.10.1's prompt_parser the extension reads: ``SdConditioning`` (the prompts list given to the text
encoder, marked negative for negative prompts) and the AND split and schedules of prompts (no prompt editing)."""

import re


class SdConditioning(list):
    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, 'is_negative_prompt', False)
        self.width = width or getattr(copy_from, 'width', None)
        self.height = height or getattr(copy_from, 'height', None)


_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


def get_multicond_prompt_list(prompts):
    """v1.10.1's shape: per prompt its ``[(index, weight)]`` AND parts, the distinct part texts, and text → index."""
    indexes, flat, where = [], SdConditioning(prompts), {}
    flat.clear()
    for prompt in prompts:
        parts = []
        for part in _AND.split(prompt):
            text, weight = _WEIGHT.match(part).groups()
            if text not in where:
                where[text] = len(flat)
                flat.append(text)
            parts.append((where[text], float(weight) if weight is not None else 1.0))
        indexes.append(parts)
    return indexes, flat, where


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    """The stand-in parses no prompt editing: each prompt is one entry ``[end step, text]`` for all steps."""
    return [[[base_steps if hires_steps is None else hires_steps, prompt]] for prompt in prompts]
