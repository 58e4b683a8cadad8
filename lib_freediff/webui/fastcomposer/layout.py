"""Prompt layout: the ``img`` markers of a prompt → the token positions of the marked nouns in the WebUI's
conditioning, through the WebUI's own prompt parser, tokenizer, emphasis mode, comma backtrack, chunk
length and textual-inversion database; and the subject counts checked before sampling."""

from __future__ import annotations

from typing import NamedTuple

from modules import shared

from lib_freediff.errors import FreeDiffError, ParamError
from lib_freediff.fastcomposer.conditioning import check_subject_count, find_markers, token_positions
from lib_freediff.fastcomposer.model import FEATURE


def encoded_parts(prompt: str, steps: int) -> list[tuple[str, list[str]]]:
    """``[(AND part, [its prompt-editing variants])]`` as the WebUI will encode them (its prompt_parser)."""
    try:
        from modules import prompt_parser
    except ImportError:
        return [(prompt, [prompt])]
    _indexes, flat, _ = prompt_parser.get_multicond_prompt_list([prompt])
    parts = [flat[i] for i, _w in _indexes[0]]
    out = []
    for part in parts:
        schedule = prompt_parser.get_learned_conditioning_prompt_schedules([part], max(1, int(steps)))[0]
        out.append((part, [text for _end, text in schedule]))
    return out


def subject_count(prompt: str, steps: int) -> int:
    """Marked subjects of a prompt: summed over AND parts; every variant of a part must agree."""
    total = 0
    for part, variants in encoded_parts(prompt, steps):
        counts = sorted({len(find_markers(v).spans) for v in variants})
        if len(counts) > 1:
            raise ParamError(FEATURE, "prompt", f"the prompt editing in {part!r} changes the number of marked subjects "
                                                f"({' vs '.join(map(str, counts))}); every variant must mark the same subjects")
        total += counts[0]
    return total


def check_prompts(p, n_images: int, hires: bool) -> None:
    checks = [(getattr(p, "all_prompts", None) or [p.prompt], p.steps)]
    if hires and getattr(p, "enable_hr", False):
        hr_steps = getattr(p, "hr_second_pass_steps", 0) or p.steps
        checks.append((getattr(p, "all_hr_prompts", None) or [], hr_steps))
    for prompts, steps in checks:
        for prompt in dict.fromkeys(prompts):
            check_subject_count(subject_count(prompt, steps), n_images)


class Layout(NamedTuple):
    clean: str
    positions: list      # conditioning index of each marked noun (last sub-token), in marker order
    nouns: list


def _find_embedding(cond_model):
    db = getattr(getattr(cond_model, "hijack", None), "embedding_db", None)
    if db is None or not hasattr(db, "find_embedding_at_position"):
        return None

    def find(tokens, position):
        embedding, length = db.find_embedding_at_position(tokens, position)
        if embedding is None:
            return None
        return int(embedding.vectors), int(length)

    return find


def text_layout(cond_model, text: str) -> Layout:
    """Marker-free text and the positions of its marked nouns in ``cond_model``'s output for it."""
    markers = find_markers(text)
    if not markers.spans:
        return Layout(text, [], [])
    clean = markers.clean_prompt

    def tokenize(t):
        return list(cond_model.tokenize([t])[0])

    chunk_length = int(getattr(cond_model, "chunk_length", 75))
    positions, n_chunks = token_positions(
        clean, markers.spans, tokenize,
        emphasis=getattr(shared.opts, "emphasis", "Original") != "None",
        comma_padding_backtrack=int(getattr(shared.opts, "comma_padding_backtrack", 20)),
        comma_token=getattr(cond_model, "comma_token", None), chunk_length=chunk_length,
        find_embedding=_find_embedding(cond_model), return_chunks=True)
    # the WebUI's own tokenizer decides: the chunks and the token at each position must agree
    chunks, _count = cond_model.tokenize_line(clean)
    stride = chunk_length + 2
    if len(chunks) != n_chunks:
        raise FreeDiffError(f"{FEATURE}: the prompt {clean!r} splits into {len(chunks)} chunks in the WebUI but {n_chunks} "
                            "in FastComposer's layout; please report this prompt", feature=FEATURE)
    for noun, pos in zip(markers.nouns, positions):
        c, t = divmod(pos, stride)
        token = chunks[c].tokens[t]
        ids = tokenize(noun)
        if token != 0 and (not ids or token != ids[-1]):  # 0: a textual-inversion vector
            raise FreeDiffError(f"{FEATURE}: could not locate the marked word {noun!r} in the WebUI's tokens of "
                                f"{clean!r}; please report this prompt", feature=FEATURE)
    return Layout(clean, list(positions), markers.nouns)
