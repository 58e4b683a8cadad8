"""Forge's textual-inversion database: it tokenizes embedding names with its own tokenizer; an embedding's ``vectors``
is set when it is loaded."""

from modules import sd_hijack_clip


class Embedding:
    def __init__(self, vec, name, step=None):
        self.vec = vec
        self.name = name
        self.step = step
        self.shape = None
        self.vectors = 0


class EmbeddingDatabase(sd_hijack_clip.EmbeddingDatabase):
    def __init__(self, tokenizer, expected_shape=-1):
        super().__init__()
        self.tokenizer = tokenizer
        self.expected_shape = expected_shape
        self.fixes = []

    def register_embedding(self, embedding):
        return self.register_ids(embedding, self.tokenizer([embedding.name], truncation=False, add_special_tokens=False)["input_ids"][0])
