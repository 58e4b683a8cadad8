"""FastComposer's prompt path on AUTOMATIC1111 v1.10.x.

Prompts reach the text encoder as ``sd_model.cond_stage_model(texts)`` (sd_hijack's FrozenCLIPEmbedderWithCustomWords,
an ``nn.Module``): a forward pre-hook hands the session the texts and has the encoder encode the marker-free ones the
session gives back; a forward hook hands it the conditioning made of them. Layouts follow that encoder's tokenizer,
chunking, the emphasis and comma-backtrack options and sd_hijack's textual-inversion database. Both hooks are removed at
the end of the generation.
"""

from __future__ import annotations

from modules import shared

from lib_freediff.errors import FreeDiffError, ParamError
from lib_freediff.fastcomposer.model import FEATURE
from lib_freediff.webui.fastcomposer.layout import PromptTokenizer, embedding_finder


class A1111PromptHooks:
    """The forward hooks on the loaded model's ``cond_stage_model`` for one generation's session."""

    def __init__(self, sd_model):
        cond = getattr(sd_model, "cond_stage_model", None)
        if not all(hasattr(cond, a) for a in ("tokenize", "tokenize_line", "register_forward_pre_hook")):
            raise ParamError(FEATURE, "model", "FastComposer's model needs the WebUI's CLIP text conditioning "
                                               "(FrozenCLIPEmbedderWithCustomWords); the loaded checkpoint's text encoder "
                                               f"is {type(cond).__name__}")
        if getattr(shared.opts, "use_old_emphasis_implementation", False):
            raise FreeDiffError(f"{FEATURE} does not work with the setting 'Use old emphasis implementation'; turn it off",
                                feature=FEATURE)
        self.cond_model = cond
        self._handles = []
        self._pending: list = []  # one encoder call's layouts, from its pre-hook to its hook

    def tokenizer(self) -> PromptTokenizer:
        cond = self.cond_model
        return PromptTokenizer(
            tokenize=lambda text: list(cond.tokenize([text])[0]), tokenize_line=cond.tokenize_line,
            chunk_length=int(getattr(cond, "chunk_length", 75)), comma_token=getattr(cond, "comma_token", None),
            comma_padding_backtrack=int(getattr(shared.opts, "comma_padding_backtrack", 20)),
            emphasis=getattr(shared.opts, "emphasis", "Original") != "None",
            find_embedding=embedding_finder(getattr(getattr(cond, "hijack", None), "embedding_db", None)))

    def attach(self, session) -> None:
        def before(module, args):
            texts = args[0] if args else None
            layouts, to_encode = session.texts_for_encoder(texts)
            self._pending.append(layouts)
            return None if to_encode is texts else (to_encode, *args[1:])

        def after(module, args, output):
            layouts = self._pending.pop() if self._pending else None
            if layouts is not None:
                session.encoded(layouts, output[0] if isinstance(output, (tuple, list)) else output)

        self._handles = [self.cond_model.register_forward_pre_hook(before), self.cond_model.register_forward_hook(after)]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending.clear()
