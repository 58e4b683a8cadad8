"""Prompt layout: the ``img`` markers of a prompt → the token positions of the marked nouns in the WebUI's
conditioning, through the WebUI's own prompt parser and the host's tokenizer, emphasis mode, comma backtrack, chunk
length and textual-inversion database (:class:`PromptTokenizer`); and the subject counts checked before sampling."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from lib_freediff.errors import FreeDiffError, ParamError
from lib_freediff.fastcomposer.conditioning import FindEmbedding, check_subject_count, find_markers, token_positions
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


class PromptTokenizer(NamedTuple):
    """What the layout needs of a host's prompt tokenizer: its own tokenization and chunking, and its settings (each host
    adapter builds it from its text encoder: :mod:`lib_freediff.webui.a1111.fastcomposer`, :mod:`...forge.fastcomposer`)."""
    tokenize: Callable[[str], list]          # one text → token ids, without BOS/EOS
    tokenize_line: Callable[[str], tuple]    # a prompt line → (chunks with ``.tokens``, token count), as the host encodes it
    chunk_length: int
    comma_token: Optional[int]
    comma_padding_backtrack: int
    emphasis: bool                           # False: the host reads brackets and BREAK as plain text
    find_embedding: Optional[FindEmbedding]  # textual-inversion embeddings, or None


def embedding_finder(db) -> Optional[FindEmbedding]:
    """``find_embedding`` over a host's textual-inversion database (``find_embedding_at_position``), or None."""
    if db is None or not hasattr(db, "find_embedding_at_position"):
        return None

    def find(tokens, position):
        embedding, length = db.find_embedding_at_position(tokens, position)
        if embedding is None:
            return None
        return int(embedding.vectors), int(length)

    return find


class Layout(NamedTuple):
    clean: str
    positions: list      # conditioning index of each marked noun (last sub-token), in marker order
    nouns: list


def text_layout(tokenizer: PromptTokenizer, text: str) -> Layout:
    """Marker-free text and the positions of its marked nouns in the host's conditioning for it."""
    markers = find_markers(text)
    if not markers.spans:
        return Layout(text, [], [])
    clean = markers.clean_prompt
    positions, n_chunks = token_positions(
        clean, markers.spans, tokenizer.tokenize, emphasis=tokenizer.emphasis,
        comma_padding_backtrack=tokenizer.comma_padding_backtrack, comma_token=tokenizer.comma_token,
        chunk_length=tokenizer.chunk_length, find_embedding=tokenizer.find_embedding, return_chunks=True)
    # the host's own tokenizer decides: the chunks and the token at each position must agree
    chunks, _count = tokenizer.tokenize_line(clean)
    stride = tokenizer.chunk_length + 2
    if len(chunks) != n_chunks:
        raise FreeDiffError(f"{FEATURE}: the prompt {clean!r} splits into {len(chunks)} chunks in the WebUI but {n_chunks} "
                            "in FastComposer's layout; please report this prompt", feature=FEATURE)
    for noun, pos in zip(markers.nouns, positions):
        c, t = divmod(pos, stride)
        token = chunks[c].tokens[t]
        ids = tokenizer.tokenize(noun)
        if token != 0 and (not ids or token != ids[-1]):  # 0: a textual-inversion vector
            raise FreeDiffError(f"{FEATURE}: could not locate the marked word {noun!r} in the WebUI's tokens of "
                                f"{clean!r}; please report this prompt", feature=FEATURE)
    return Layout(clean, list(positions), markers.nouns)
