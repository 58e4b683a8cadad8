"""FastComposer's prompt path on Forge.

Forge has no ``cond_stage_model``: prompt_parser calls ``sd_model.get_learned_conditioning(texts)``, which runs the
model's ``text_processing_engine`` (``backend/text_processing/classic_engine.py`` ClassicTextProcessingEngine, not an
``nn.Module``: no hooks on it; it calls ``text_encoder.transformer`` chunk by chunk). For one generation the model object
gets ``get_learned_conditioning`` as an attribute of its own that hands the session the texts, encodes the marker-free
ones it gives back through Forge's method (or another extension's wrapper) and hands the session the conditioning made
of them; it is removed at the end. Layouts follow the engine's own tokenizer, chunking, emphasis mode and textual-
inversion database.
"""

from __future__ import annotations

from modules import shared

from lib_freediff.errors import ParamError
from lib_freediff.fastcomposer.model import FEATURE
from lib_freediff.webui.fastcomposer.layout import PromptTokenizer, embedding_finder

ENCODE = "get_learned_conditioning"
# the engine's word wrap: it fixes the backtrack at 20 tokens and does not read the comma_padding_backtrack option
COMMA_PADDING_BACKTRACK = 20


class ForgePromptHooks:
    """``get_learned_conditioning`` of the loaded model object, wrapped for one generation's session."""

    def __init__(self, sd_model):
        engine = getattr(sd_model, "text_processing_engine", None)
        if not all(hasattr(engine, a) for a in ("tokenize", "tokenize_line", "chunk_length", "embeddings")):
            raise ParamError(FEATURE, "model", "FastComposer's model needs Forge's CLIP text processing "
                                               "(ClassicTextProcessingEngine); the loaded checkpoint's text processing "
                                               f"is {type(engine).__name__}")
        self.sd_model, self.engine = sd_model, engine
        self.session = None
        self._wrapper = None
        self._previous = None  # an instance attribute another extension had put there

    def tokenizer(self) -> PromptTokenizer:
        from backend.text_processing import emphasis

        engine = self.engine
        # what the engine's next encode sets first; its tokenize_line (read below) parses brackets by it
        engine.emphasis = emphasis.get_current_option(shared.opts.emphasis)()
        return PromptTokenizer(
            tokenize=lambda text: list(engine.tokenize([text])[0]), tokenize_line=engine.tokenize_line,
            chunk_length=int(engine.chunk_length), comma_token=engine.comma_token,
            comma_padding_backtrack=COMMA_PADDING_BACKTRACK, emphasis=engine.emphasis.name != "None",
            find_embedding=embedding_finder(engine.embeddings))

    def attach(self, session) -> None:
        self.session = session
        encode = getattr(self.sd_model, ENCODE)  # Forge's method, or another extension's wrapper
        self._previous = vars(self.sd_model).get(ENCODE)

        def get_learned_conditioning(prompt):
            if self.session is None:  # closed, but kept by a wrapper put on top of ours: pass through
                return encode(prompt)
            layouts, texts = self.session.texts_for_encoder(prompt)
            cond = encode(texts)
            if layouts is not None:
                self.session.encoded(layouts, cond)
            return cond

        self._wrapper = get_learned_conditioning
        setattr(self.sd_model, ENCODE, get_learned_conditioning)  # this model object's own, removed in close()

    def close(self) -> None:
        self.session = None
        if self._wrapper is not None and vars(self.sd_model).get(ENCODE) is self._wrapper:
            if self._previous is None:
                delattr(self.sd_model, ENCODE)
            else:
                setattr(self.sd_model, ENCODE, self._previous)
        self._wrapper = self._previous = None
