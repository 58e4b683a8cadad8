"""The WebUI's text conditioning for SD1 (v1.10.1 ``modules/sd_hijack_clip.py``), re-implemented for tests.

Same names and behaviour as the real module where the extension relies on them:
``FrozenCLIPEmbedderWithCustomWords(wrapped, hijack)`` with ``tokenize``, ``tokenize_line`` →
``PromptChunk`` lists (75 tokens + BOS/EOS per chunk, ``BREAK``, comma backtrack from
``opts.comma_padding_backtrack``, textual-inversion embeddings as ``PromptChunkFix``), ``forward(texts)``
(chunks encoded one by one and concatenated: ``(B, 77·k, C)``), emphasis after the transformer from
``opts.emphasis`` ("Original" multiplies and restores the mean, "No norm", "Ignore", "None"),
``opts.CLIP_stop_at_last_layers``.

The real WebUI keeps the embedding database and ``EmbeddingsWithFixes`` in ``textual_inversion`` and
``sd_hijack``; the small versions here (``EmbeddingDatabase``, ``Embedding``, ``ModelHijack``,
``EmbeddingsWithFixes``) follow them. ``build_cond_stage_model(tokenizer, text_model)`` wires a
transformers ``CLIPTextModel`` the way ``sd_hijack`` does. Left out: the old emphasis implementation.
"""

from __future__ import annotations

import math
import re
from collections import namedtuple

import torch

from modules import devices
from modules.shared import opts

CHUNK_LENGTH = 75


class PromptChunk:
    """Token ids, multipliers and embedding fixes of one 77-token chunk of a prompt."""

    def __init__(self):
        self.tokens = []
        self.multipliers = []
        self.fixes = []


PromptChunkFix = namedtuple("PromptChunkFix", ["offset", "embedding"])


# --------------------------------------------------------------------------------------------------
# emphasis parsing (prompt_parser.parse_prompt_attention) and emphasis modes (sd_emphasis)
# --------------------------------------------------------------------------------------------------

_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text):
    """``[[fragment, weight], ...]`` with ``["BREAK", -1]`` entries, as the WebUI's parser: ``(x)`` ×1.1,
    ``[x]`` ÷1.1, ``(x:w)`` ×w, backslash escapes, unbalanced brackets closed at the end, equal
    neighbouring weights merged."""
    out = []          # [fragment, weight]
    rounds, squares = [], []

    def scale(start, factor):
        for item in out[start:]:
            item[1] *= factor

    def plain(s):
        for k, piece in enumerate(_BREAK.split(s)):
            if k:
                out.append(["BREAK", -1])
            out.append([piece, 1.0])

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            nxt = text[i + 1] if i + 1 < n else ""
            out.append([nxt if nxt in "()[]\\" else "", 1.0])
            i += 2 if nxt in "()[]\\" and nxt else 1
        elif c == "(":
            rounds.append(len(out))
            i += 1
        elif c == "[":
            squares.append(len(out))
            i += 1
        elif c == ":" and _WEIGHT_CLOSE.match(text, i):
            m = _WEIGHT_CLOSE.match(text, i)
            if rounds:
                scale(rounds.pop(), float(m.group(1)))
            else:
                plain(m.group(0))
            i = m.end()
        elif c == ")" and rounds:
            scale(rounds.pop(), 1.1)
            i += 1
        elif c == "]" and squares:
            scale(squares.pop(), 1 / 1.1)
            i += 1
        elif c in ")]:":
            plain(c)
            i += 1
        else:
            j = i
            while j < n and text[j] not in "\\()[]:":
                j += 1
            plain(text[i:j])
            i = j
    for start in rounds:
        scale(start, 1.1)
    for start in squares:
        scale(start, 1 / 1.1)
    if not out:
        out = [["", 1.0]]
    k = 0
    while k + 1 < len(out):
        if out[k][1] == out[k + 1][1]:
            out[k][0] += out[k + 1][0]
            out.pop(k + 1)
        else:
            k += 1
    return out


def apply_emphasis(z, multipliers, mode=None):
    """``z`` weighted by the emphasis multipliers as emphasis ``mode`` (default: the option) does."""
    mode = mode or getattr(opts, "emphasis", "Original")
    if mode in ("None", "Ignore"):
        return z
    scaled = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
    if mode == "No norm":
        return scaled
    return scaled * (z.mean() / scaled.mean())


# --------------------------------------------------------------------------------------------------
# textual inversion: database, hijack state, token-embedding wrapper
# --------------------------------------------------------------------------------------------------

class Embedding:
    def __init__(self, vec, name, shorthash=None):
        self.vec = vec
        self.name = name
        self.shorthash = shorthash

    @property
    def vectors(self):
        return self.vec.shape[0]


class EmbeddingDatabase:
    def __init__(self):
        self.word_embeddings = {}
        self.ids_lookup = {}

    def register_embedding(self, embedding, model):
        """``model``: the cond-stage wrapper (its tokenizer gives the name's ids)."""
        return self.register_ids(embedding, model.tokenize([embedding.name])[0])

    def register_ids(self, embedding, ids):
        self.word_embeddings[embedding.name] = embedding
        first = ids[0]
        self.ids_lookup.setdefault(first, [])
        self.ids_lookup[first] = sorted(self.ids_lookup[first] + [(ids, embedding)], key=lambda x: len(x[0]), reverse=True)
        return embedding

    def find_embedding_at_position(self, tokens, offset):
        token = tokens[offset]
        possible = self.ids_lookup.get(token)
        if possible is None:
            return None, None
        for ids, embedding in possible:
            if tokens[offset:offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, None


class ModelHijack:
    def __init__(self):
        self.fixes = None
        self.extra_generation_params = {}
        self.embedding_db = EmbeddingDatabase()


class EmbeddingsWithFixes(torch.nn.Module):
    """Puts the embedding vectors at their offsets after the token embedding (``hijack.fixes``)."""

    def __init__(self, wrapped, embeddings):
        super().__init__()
        self.wrapped = wrapped
        self.embeddings = embeddings

    def forward(self, input_ids):
        batch_fixes = self.embeddings.fixes
        self.embeddings.fixes = None
        inputs_embeds = self.wrapped(input_ids)
        if not batch_fixes or max(len(x) for x in batch_fixes) == 0:
            return inputs_embeds
        rows = []
        for fixes, tensor in zip(batch_fixes, inputs_embeds):
            for offset, embedding in fixes:
                emb = embedding.vec.to(tensor.device, tensor.dtype)
                n = min(tensor.shape[0] - offset - 1, emb.shape[0])
                tensor = torch.cat([tensor[0:offset + 1], emb[0:n], tensor[offset + 1 + n:]])
            rows.append(tensor)
        return torch.stack(rows)


class FrozenCLIPEmbedder(torch.nn.Module):
    """What ldm's FrozenCLIPEmbedder gives the wrapper: ``tokenizer`` and ``transformer``."""

    def __init__(self, tokenizer, transformer):
        super().__init__()
        self.tokenizer = tokenizer
        self.transformer = transformer


# --------------------------------------------------------------------------------------------------
# the conditioning model
# --------------------------------------------------------------------------------------------------

class TextConditionalModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hijack = None
        self.chunk_length = CHUNK_LENGTH
        self.comma_token = None
        self.id_start = None
        self.id_end = None
        self.id_pad = None
        self.return_pooled = False

    def empty_chunk(self):
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (self.chunk_length + 1)
        chunk.multipliers = [1.0] * (self.chunk_length + 2)
        return chunk

    def get_target_prompt_token_count(self, token_count):
        return math.ceil(max(token_count, 1) / self.chunk_length) * self.chunk_length

    def tokenize(self, texts):
        raise NotImplementedError

    def encode_with_transformers(self, tokens):
        raise NotImplementedError

    def tokenize_line(self, line):
        """One prompt → (list of PromptChunk, token count)."""
        parsed = parse_prompt_attention(line) if getattr(opts, "emphasis", "Original") != "None" else [[line, 1.0]]
        return chunk_prompt(self, parsed, opts.comma_padding_backtrack, self.hijack.embedding_db)

    def process_texts(self, texts):
        return process_texts(self, texts)

    def forward(self, texts):
        """Texts → ``(B, 77·k, C)``; k is the most chunks any text needs (shorter texts get empty chunks)."""
        batch_chunks, _ = self.process_texts(texts)
        z, used = encode_chunks(self, batch_chunks, self.hijack)
        hashes = [f"{name}: {e.shorthash}" for name, e in used.items() if e.shorthash]
        if hashes:
            self.hijack.extra_generation_params["TI hashes"] = ", ".join(hashes)
        return z

    def process_tokens(self, remade_batch_tokens, batch_multipliers):
        tokens = torch.asarray(remade_batch_tokens).to(devices.device)
        if self.id_end != self.id_pad:
            for row in range(len(remade_batch_tokens)):
                index = remade_batch_tokens[row].index(self.id_end)
                tokens[row, index + 1:tokens.shape[1]] = self.id_pad
        z = self.encode_with_transformers(tokens)
        multipliers = torch.asarray(batch_multipliers).to(device=z.device, dtype=z.dtype)
        return apply_emphasis(z, multipliers)


class FrozenCLIPEmbedderWithCustomWordsBase(TextConditionalModel):
    def __init__(self, wrapped, hijack):
        super().__init__()
        self.hijack = hijack
        self.wrapped = wrapped
        self.return_pooled = getattr(wrapped, "return_pooled", False)

    def forward(self, texts):
        return super().forward(texts)


class FrozenCLIPEmbedderWithCustomWords(FrozenCLIPEmbedderWithCustomWordsBase):
    def __init__(self, wrapped, hijack):
        super().__init__(wrapped, hijack)
        self.tokenizer = wrapped.tokenizer
        vocab = self.tokenizer.get_vocab()
        self.comma_token = vocab.get(",</w>", None)
        self.id_start = self.tokenizer.bos_token_id
        self.id_end = self.tokenizer.eos_token_id
        self.id_pad = self.id_end

    def tokenize(self, texts):
        return self.wrapped.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def encode_with_transformers(self, tokens):
        layers = opts.CLIP_stop_at_last_layers
        outputs = self.wrapped.transformer(input_ids=tokens, output_hidden_states=-layers)
        if layers > 1:
            z = outputs.hidden_states[-layers]
            z = self.wrapped.transformer.text_model.final_layer_norm(z)
        else:
            z = outputs.last_hidden_state
        return z


# --------------------------------------------------------------------------------------------------
# a prompt line → 75-token chunks, and a batch of chunked prompts → conditioning (the WebUI's tokenize_line,
# process_texts and forward; Forge's text engine does the same with its own settings)
# --------------------------------------------------------------------------------------------------

def chunk_prompt(encoder, parsed, backtrack, embedding_db):
    """``parsed`` (``[[fragment, weight], …]``, ``["BREAK", -1]`` entries) → (list of PromptChunk, token count), with
    ``encoder``'s ``tokenize``, ``chunk_length``, ``comma_token`` and ids, the comma backtrack ``backtrack`` and the
    textual-inversion database ``embedding_db``."""
    tokenized = encoder.tokenize([text for text, _ in parsed])
    chunks = []
    state = {"chunk": PromptChunk(), "count": 0, "last_comma": -1}

    def close(is_last=False):
        chunk = state["chunk"]
        state["count"] += len(chunk.tokens) if is_last else encoder.chunk_length
        pad = encoder.chunk_length - len(chunk.tokens)
        if pad > 0:
            chunk.tokens += [encoder.id_end] * pad
            chunk.multipliers += [1.0] * pad
        chunk.tokens = [encoder.id_start] + chunk.tokens + [encoder.id_end]
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
        state["last_comma"] = -1
        chunks.append(chunk)
        state["chunk"] = PromptChunk()

    for tokens, (text, weight) in zip(tokenized, parsed):
        if text == "BREAK" and weight == -1:
            close()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            chunk = state["chunk"]
            if token == encoder.comma_token:
                state["last_comma"] = len(chunk.tokens)
            elif (backtrack != 0 and len(chunk.tokens) == encoder.chunk_length and state["last_comma"] != -1
                  and len(chunk.tokens) - state["last_comma"] <= backtrack):
                cut = state["last_comma"] + 1
                moved_tokens, moved_mults = chunk.tokens[cut:], chunk.multipliers[cut:]
                chunk.tokens, chunk.multipliers = chunk.tokens[:cut], chunk.multipliers[:cut]
                close()
                state["chunk"].tokens, state["chunk"].multipliers = moved_tokens, moved_mults
            if len(state["chunk"].tokens) == encoder.chunk_length:
                close()
            chunk = state["chunk"]

            embedding, consumed = embedding_db.find_embedding_at_position(tokens, position)
            if embedding is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
                position += 1
                continue
            n = int(embedding.vectors)
            if len(chunk.tokens) + n > encoder.chunk_length:
                close()
                chunk = state["chunk"]
            chunk.fixes.append(PromptChunkFix(len(chunk.tokens), embedding))
            chunk.tokens += [0] * n
            chunk.multipliers += [weight] * n
            position += consumed

    if state["chunk"].tokens or not chunks:
        close(is_last=True)
    return chunks, state["count"]


def process_texts(encoder, texts):
    """Each text's chunks (``encoder.tokenize_line``, once per distinct text) and the largest token count."""
    token_count = 0
    cache = {}
    batch_chunks = []
    for line in texts:
        if line in cache:
            chunks = cache[line]
        else:
            chunks, count = encoder.tokenize_line(line)
            token_count = max(count, token_count)
            cache[line] = chunks
        batch_chunks.append(chunks)
    return batch_chunks, token_count


def encode_chunks(encoder, batch_chunks, fixes_holder):
    """``(B, 77·k, C)`` from each text's chunks, chunk by chunk through ``encoder.process_tokens`` (shorter texts get
    ``encoder.empty_chunk()``), each chunk's embedding fixes put on ``fixes_holder.fixes`` for the token embedding;
    and the embeddings used, by name."""
    chunk_count = max(len(x) for x in batch_chunks)
    zs = []
    used = {}
    for i in range(chunk_count):
        batch_chunk = [chunks[i] if i < len(chunks) else encoder.empty_chunk() for chunks in batch_chunks]
        tokens = [x.tokens for x in batch_chunk]
        multipliers = [x.multipliers for x in batch_chunk]
        fixes_holder.fixes = [x.fixes for x in batch_chunk]
        for fixes in fixes_holder.fixes:
            for _offset, embedding in fixes:
                used[embedding.name] = embedding
        zs.append(encoder.process_tokens(tokens, multipliers))
    return torch.hstack(zs), used


def build_cond_stage_model(tokenizer, text_model, hijack=None):
    """``sd_model.cond_stage_model`` as the WebUI has it after ``sd_hijack``: the wrapper around
    FrozenCLIPEmbedder, with the token embedding replaced by ``EmbeddingsWithFixes``."""
    hijack = hijack or ModelHijack()
    embeddings = text_model.text_model.embeddings
    if not isinstance(embeddings.token_embedding, EmbeddingsWithFixes):
        embeddings.token_embedding = EmbeddingsWithFixes(embeddings.token_embedding, hijack)
    return FrozenCLIPEmbedderWithCustomWords(FrozenCLIPEmbedder(tokenizer, text_model.eval()), hijack)
