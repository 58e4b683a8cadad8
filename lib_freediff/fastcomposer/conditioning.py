"""Prompt markers, token positions in the WebUI's conditioning layout, and delayed subject conditioning.

Marker syntax
-------------
A subject is marked by the word ``img`` written right after its noun, as in the FastComposer demo::

    a man img and a woman img at the beach

- ``img`` counts as a marker only as a standalone, lower-case word: preceded by whitespace and followed
  by whitespace, the end of the prompt or one of ``, . ; : ! ? ) ] |``. ``Img``, ``IMG``, ``imgur``,
  ``img_01`` and ``<lora:img:1>`` are ordinary text. A prompt's first word is never a marker.
- The marked noun is the word before the marker, skipping closing brackets, an emphasis weight and
  trailing punctuation: ``(a man img:1.2)``, ``(a man:1.2) img``, ``[a man] img``, ``a man, img`` all
  mark ``man``. The noun runs back to the previous whitespace or bracket (``t-shirt``, ``man's``).
- Markers are removed (together with the whitespace before them) before the prompt reaches the text
  encoder: the model never sees them. Subject j (in prompt order) takes reference image j.
- The fused token is the noun's LAST sub-token (the reference flags the token just before ``img``).

Positions
---------
The WebUI (``FrozenCLIPEmbedderWithCustomWords``) cuts a prompt into chunks of 75 tokens, encodes each
as 77 (BOS + 75 + EOS/padding) and concatenates them: conditioning ``(B, 77*k, 768)``. A token at
index t of chunk c is at ``c*77 + 1 + t``. ``token_positions`` walks the prompt exactly as the WebUI's
``tokenize_line`` does (v1.10.1):
- emphasis parsed like ``prompt_parser.parse_prompt_attention`` (``(..)``, ``[..]``, ``(..:w)``,
  escapes, ``BREAK``; fragments of equal weight merged), each fragment tokenized separately;
- ``BREAK`` starts a new chunk;
- when a chunk is full and the last comma is at most ``comma_padding_backtrack`` (WebUI option
  ``comma_padding_backtrack``, default 20) tokens back, the tokens after that comma move to the next
  chunk (implemented; pass the WebUI's value);
- textual-inversion embeddings change token counts: pass ``find_embedding`` (see ``token_positions``)
  to follow them; without it, embedding names count as their text tokens.
Prompt editing/alternation (``[a:b:0.5]``, ``[a|b]``), ``AND`` and extra networks (``<lora:..>``) are
resolved by the WebUI before this stage: compute positions on the text the WebUI actually encodes.

Delayed subject conditioning
----------------------------
``delayed_switch_step(alpha, steps) = floor((1 - alpha) * steps)``: sampling steps ``i < switch`` use the
text-only conditioning, steps ``i >= switch`` the augmented one. alpha = 0 → never augmented; alpha = 1
→ augmented from step 0. (The reference pipeline keeps text-only while ``i <= (1 - alpha) * steps``,
one step more; this module follows the documented ``i >= floor(...)`` rule.)
"""

from __future__ import annotations

import math
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from ..errors import ParamError
from .model import FEATURE

MARKER = "img"
CHUNK_LENGTH = 75
COMMA_PADDING_BACKTRACK = 20

Tokenize = Callable[[str], List[int]]
FindEmbedding = Callable[[Sequence[int], int], Optional[Tuple[int, int]]]


# ----------------------------------------------------------------------------------------------------
# Markers
# ----------------------------------------------------------------------------------------------------

class Markers(NamedTuple):
    clean_prompt: str
    spans: List[Tuple[int, int]]  # noun character spans in clean_prompt, one per marker, in order

    @property
    def nouns(self) -> List[str]:
        return [self.clean_prompt[a:b] for a, b in self.spans]


_RE_EXTRA_NETWORK = re.compile(r"<[^<>]*>")
_NOUN_STOP = set(" \t\r\n()[]{}<>:|,;!?\"\\")
_TRAILING_PUNCT = set(",.;!?")
_RE_WEIGHT_TAIL = re.compile(r":\s*[+-]?[.\d]+\s*$")


def _marker_regex(marker: str):
    return re.compile(r"(?<=\s)" + re.escape(marker) + r"(?=$|[\s,.;:!?)\]|])")


def find_markers(prompt: str, marker: str = MARKER) -> Markers:
    """Remove subject markers from ``prompt``; return ``(clean_prompt, noun_spans)``.

    ``noun_spans[j] = (start, end)`` is the character span, in ``clean_prompt``, of the noun marked by
    marker j. A marker with no word before it raises ``ParamError`` naming ``prompt``.
    """
    if not isinstance(prompt, str):
        raise ParamError(FEATURE, "prompt", f"expected a string, got {type(prompt).__name__}")
    protected = [(m.start(), m.end()) for m in _RE_EXTRA_NETWORK.finditer(prompt)]

    def inside_protected(i):
        return any(a <= i < b for a, b in protected)

    found = []  # (remove_from, remove_to, noun_start, noun_end) in original coordinates
    for m in _marker_regex(marker).finditer(prompt):
        if inside_protected(m.start()):
            continue
        ws = m.start()
        while ws > 0 and prompt[ws - 1].isspace():
            ws -= 1
        j = ws
        closed_round = False
        while j > 0:
            c = prompt[j - 1]
            if c.isspace() or c in _TRAILING_PUNCT:
                j -= 1
            elif c in ")]":
                closed_round = closed_round or c == ")"
                j -= 1
            elif c in ":0123456789.+-" and closed_round and _RE_WEIGHT_TAIL.search(prompt[:j]):
                j = _RE_WEIGHT_TAIL.search(prompt[:j]).start()
                closed_round = False
            else:
                break
        end = j
        start = end
        while start > 0 and prompt[start - 1] not in _NOUN_STOP and not prompt[start - 1].isspace():
            start -= 1
        noun = prompt[start:end]
        if not noun or noun in ("BREAK", "AND") or inside_protected(start):
            raise ParamError(FEATURE, "prompt", f"the subject marker '{marker}' at character {m.start()} "
                                                "does not follow a word (write it after the noun: 'a man img')")
        if found and start < found[-1][1]:
            raise ParamError(FEATURE, "prompt", f"the subject marker '{marker}' at character {m.start()} "
                                                "follows another marker, not a noun")
        found.append((ws, m.end(), start, end))

    if not found:
        return Markers(prompt, [])
    pieces, spans, shift, pos = [], [], 0, 0
    for rm_from, rm_to, a, b in found:
        spans.append((a - shift, b - shift))
        pieces.append(prompt[pos:rm_from])
        shift += rm_to - rm_from
        pos = rm_to
    pieces.append(prompt[pos:])
    return Markers("".join(pieces), spans)


def strip_markers(prompt: str, marker: str = MARKER) -> str:
    """The prompt the text encoder should see."""
    return find_markers(prompt, marker).clean_prompt


def count_markers(prompt: str, marker: str = MARKER) -> int:
    return len(find_markers(prompt, marker).spans)


def check_subject_count(n_markers: int, n_images: int, marker: str = MARKER) -> None:
    """``ParamError`` naming ``images`` unless every marker has exactly one reference image."""
    if n_markers != n_images:
        raise ParamError(FEATURE, "images", f"the prompt marks {n_markers} subject(s) with '{marker}' but "
                                            f"{n_images} reference image(s) were given; they must match "
                                            "(image j goes with the j-th marked noun)")


# ----------------------------------------------------------------------------------------------------
# Emphasis parsing with character offsets (mirrors prompt_parser.parse_prompt_attention)
# ----------------------------------------------------------------------------------------------------

_RE_ATTENTION = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_attention_with_offsets(text: str) -> List[Tuple[str, float, List[int]]]:
    """``[(fragment, weight, offsets)]`` as the WebUI's ``parse_prompt_attention`` (same fragments and
    weights, ``BREAK`` as ``("BREAK", -1)``), plus for each fragment character its index in ``text``."""
    res: List[list] = []
    round_brackets: List[int] = []
    square_brackets: List[int] = []

    def multiply_range(start, mult):
        for p in range(start, len(res)):
            res[p][1] *= mult

    for m in _RE_ATTENTION.finditer(text):
        s = m.group(0)
        weight = m.group(1)
        if s.startswith("\\"):
            res.append([s[1:], 1.0, list(range(m.start() + 1, m.end()))])
        elif s == "(":
            round_brackets.append(len(res))
        elif s == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif s == ")" and round_brackets:
            multiply_range(round_brackets.pop(), 1.1)
        elif s == "]" and square_brackets:
            multiply_range(square_brackets.pop(), 1 / 1.1)
        else:
            pos = 0
            first = True
            for bm in list(_RE_BREAK.finditer(s)) + [None]:
                end = bm.start() if bm is not None else len(s)
                if not first:
                    res.append(["BREAK", -1, []])
                res.append([s[pos:end], 1.0, list(range(m.start() + pos, m.start() + end))])
                first = False
                if bm is not None:
                    pos = bm.end()

    for p in round_brackets:
        multiply_range(p, 1.1)
    for p in square_brackets:
        multiply_range(p, 1 / 1.1)
    if not res:
        res = [["", 1.0, []]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res[i][2] += res[i + 1][2]
            res.pop(i + 1)
        else:
            i += 1
    return [(t, w, o) for t, w, o in res]


# ----------------------------------------------------------------------------------------------------
# Token positions
# ----------------------------------------------------------------------------------------------------

class SubjectLayout(NamedTuple):
    clean_prompt: str
    positions: List[int]     # per subject, index in the concatenated (77*k) conditioning
    nouns: List[str]
    chunks: int              # k: number of 77-token chunks of this prompt


def token_positions(clean_prompt: str, spans: Sequence[Tuple[int, int]], tokenize: Tokenize, *,
                    emphasis: bool = True, comma_padding_backtrack: int = COMMA_PADDING_BACKTRACK,
                    comma_token: Optional[int] = None, chunk_length: int = CHUNK_LENGTH,
                    find_embedding: Optional[FindEmbedding] = None, return_chunks: bool = False):
    """Index of each marked noun's last sub-token in the WebUI's concatenated conditioning.

    ``tokenize(text) -> ids`` without BOS/EOS (e.g. ``lambda t: tok(t, add_special_tokens=False,
    truncation=False)["input_ids"]``, or the WebUI's ``cond_stage_model.tokenize([t])[0]``).
    ``emphasis``: False when the WebUI's emphasis option is "None" (no bracket parsing, no BREAK).
    ``find_embedding(tokens, position) -> (vectors, tokens_consumed) | None`` mirrors the WebUI's
    ``embedding_db.find_embedding_at_position`` for textual-inversion embeddings.
    Returns ``[c*(chunk_length+2) + 1 + t, ...]`` (and the chunk count when ``return_chunks``).
    """
    if emphasis:
        parsed = parse_attention_with_offsets(clean_prompt)
    else:
        parsed = [(clean_prompt, 1.0, list(range(len(clean_prompt))))]
    where: Dict[int, Tuple[int, int]] = {}
    for f, (_t, _w, offs) in enumerate(parsed):
        for k, o in enumerate(offs):
            where[o] = (f, k)
    tokenized = [tokenize(t) for t, _w, _o in parsed]

    # tag (fragment, token index) with the subjects whose noun ends there
    tags: Dict[Tuple[int, int], List[int]] = {}
    for j, (a, b) in enumerate(spans):
        if not 0 <= a < b <= len(clean_prompt):
            raise ParamError(FEATURE, "prompt", f"noun span {(a, b)} is outside the prompt")
        last = b - 1
        while last >= a and clean_prompt[last].isspace():
            last -= 1
        if last < a or last not in where:
            raise ParamError(FEATURE, "prompt", f"the marked word {clean_prompt[a:b]!r} is not prompt text "
                                                "(inside emphasis syntax?)")
        f, k = where[last]
        n = len(tokenize(parsed[f][0][: k + 1]))
        if n == 0:
            raise ParamError(FEATURE, "prompt", f"the marked word {clean_prompt[a:b]!r} gives no tokens")
        n = min(n, len(tokenized[f]))
        tags.setdefault((f, n - 1), []).append(j)

    if comma_token is None:
        ct = tokenize(",")
        comma_token = ct[0] if len(ct) == 1 else None

    stride = chunk_length + 2
    result: List[Optional[int]] = [None] * len(spans)
    chunk: List[Tuple[int, List[int]]] = []
    n_chunks = 0
    last_comma = -1

    def next_chunk():
        nonlocal chunk, n_chunks, last_comma
        for idx, (_tok, tg) in enumerate(chunk):
            for j in tg:
                result[j] = n_chunks * stride + 1 + idx
        n_chunks += 1
        last_comma = -1
        chunk = []

    for f, (tokens, (text, weight, _o)) in enumerate(zip(tokenized, parsed)):
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if comma_token is not None and token == comma_token:
                last_comma = len(chunk)
            elif (comma_padding_backtrack != 0 and len(chunk) == chunk_length and last_comma != -1
                  and len(chunk) - last_comma <= comma_padding_backtrack):
                brk = last_comma + 1
                reloc = chunk[brk:]
                chunk = chunk[:brk]
                next_chunk()
                chunk = reloc
            if len(chunk) == chunk_length:
                next_chunk()
            emb = find_embedding(tokens, position) if find_embedding is not None else None
            if emb is None:
                chunk.append((token, tags.get((f, position), [])))
                position += 1
                continue
            vectors, consumed = int(emb[0]), max(1, int(emb[1]))
            if len(chunk) + vectors > chunk_length:
                next_chunk()
            covered = [j for p in range(position, position + consumed) for j in tags.get((f, p), [])]
            for v in range(vectors):
                chunk.append((0, covered if v == vectors - 1 else []))
            position += consumed
    if chunk or n_chunks == 0:
        next_chunk()

    missing = [j for j, r in enumerate(result) if r is None]
    if missing:  # e.g. the noun was swallowed by a zero-vector embedding
        raise ParamError(FEATURE, "prompt", f"could not place marked word(s) "
                                            f"{[clean_prompt[slice(*spans[j])] for j in missing]} in the prompt's tokens")
    return (result, n_chunks) if return_chunks else result


def subject_positions(prompt: str, tokenize: Tokenize, *, marker: str = MARKER, **kw) -> SubjectLayout:
    """``find_markers`` + ``token_positions`` in one call, on a prompt that still has its markers."""
    clean, spans = find_markers(prompt, marker)
    positions, chunks = token_positions(clean, spans, tokenize, return_chunks=True, **kw)
    return SubjectLayout(clean, positions, [clean[a:b] for a, b in spans], chunks)


# ----------------------------------------------------------------------------------------------------
# Delayed subject conditioning
# ----------------------------------------------------------------------------------------------------

def _check_alpha(alpha) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ParamError(FEATURE, "alpha", f"expected a number in [0, 1], got {alpha!r}") from None
    if not (0.0 <= a <= 1.0) or math.isnan(a):
        raise ParamError(FEATURE, "alpha", f"must be in [0, 1], got {alpha!r}")
    return a


def delayed_switch_step(alpha: float, steps: int) -> int:
    """First sampling step that uses the augmented conditioning: ``floor((1 - alpha) * steps)``.

    Steps ``i < switch`` are text-only, ``i >= switch`` augmented; alpha = 0 gives ``steps`` (never),
    alpha = 1 gives 0. Rounded to 9 decimals first so that e.g. (1 - 0.9) * 10 counts as 1, not 0.999….
    """
    a = _check_alpha(alpha)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ParamError(FEATURE, "steps", f"expected a non-negative integer, got {steps!r}")
    return min(steps, max(0, math.floor(round((1.0 - a) * steps, 9))))


def use_augmented(step: int, alpha: float, steps: int) -> bool:
    """Whether sampling step ``step`` (0-based) gets the subject-augmented conditioning."""
    return step >= delayed_switch_step(alpha, steps)
