"""Forge's ClassicTextProcessingEngine (SD1.x/SD2.x/SDXL's CLIP text processing), as far as sd-webui-freediff reads it.

Not an ``nn.Module``: the model's ``get_learned_conditioning`` calls it with the texts. It cuts each line into chunks
of 75 tokens as A1111 does (emphasis parsed by the mode's name, ``BREAK``, the comma word wrap fixed at 20 tokens,
textual-inversion embeddings from its own database), encodes each chunk through ``text_encoder.transformer`` (the
hidden state at the clip skip, the final layer norm) and weights it by the emphasis after the transformer.
"""

import torch

from backend.text_processing import emphasis, parsing
from backend.text_processing.textual_inversion import EmbeddingDatabase
from modules import sd_hijack_clip
from modules.shared import opts

last_extra_generation_params = {}


class CLIPEmbeddingForTextualInversion(sd_hijack_clip.EmbeddingsWithFixes):
    def __init__(self, wrapped, embeddings, textual_inversion_key='clip_l'):
        super().__init__(wrapped, embeddings)
        self.textual_inversion_key = textual_inversion_key
        self.weight = self.wrapped.weight


class ClassicTextProcessingEngine:
    def __init__(self, text_encoder, tokenizer, chunk_length=75, embedding_dir=None, embedding_key='clip_l',
                 embedding_expected_shape=768, emphasis_name="Original", text_projection=False, minimal_clip_skip=1,
                 clip_skip=1, return_pooled=False, final_layer_norm=True):
        self.embeddings = EmbeddingDatabase(tokenizer, embedding_expected_shape)
        self.embedding_key = embedding_key
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.emphasis = emphasis.get_current_option(opts.emphasis)()
        self.minimal_clip_skip = minimal_clip_skip
        self.clip_skip = clip_skip
        self.return_pooled = return_pooled
        self.final_layer_norm = final_layer_norm
        self.chunk_length = chunk_length
        self.id_start = tokenizer.bos_token_id
        self.id_end = tokenizer.eos_token_id
        self.id_pad = tokenizer.pad_token_id
        embeddings = text_encoder.transformer.text_model.embeddings
        embeddings.token_embedding = CLIPEmbeddingForTextualInversion(embeddings.token_embedding, self.embeddings, textual_inversion_key=embedding_key)
        self.comma_token = tokenizer.get_vocab().get(',</w>', None)

    def empty_chunk(self):
        chunk = sd_hijack_clip.PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (self.chunk_length + 1)
        chunk.multipliers = [1.0] * (self.chunk_length + 2)
        return chunk

    def tokenize(self, texts):
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def encode_with_transformers(self, tokens):
        outputs = self.text_encoder.transformer(tokens, output_hidden_states=True)
        z = outputs.hidden_states[-max(self.clip_skip, self.minimal_clip_skip)]
        if self.final_layer_norm:
            z = self.text_encoder.transformer.text_model.final_layer_norm(z)
        return z

    def tokenize_line(self, line):
        parsed = parsing.parse_prompt_attention(line, self.emphasis.name)
        return sd_hijack_clip.chunk_prompt(self, parsed, 20, self.embeddings)

    def process_texts(self, texts):
        return sd_hijack_clip.process_texts(self, texts)

    def __call__(self, texts):
        self.emphasis = emphasis.get_current_option(opts.emphasis)()
        batch_chunks, _token_count = self.process_texts(texts)
        z, _used = sd_hijack_clip.encode_chunks(self, batch_chunks, self.embeddings)
        return z

    def process_tokens(self, remade_batch_tokens, batch_multipliers):
        tokens = torch.asarray(remade_batch_tokens)
        if self.id_end != self.id_pad:
            for batch_pos in range(len(remade_batch_tokens)):
                index = remade_batch_tokens[batch_pos].index(self.id_end)
                tokens[batch_pos, index + 1:tokens.shape[1]] = self.id_pad
        z = self.encode_with_transformers(tokens)
        self.emphasis.tokens = remade_batch_tokens
        self.emphasis.multipliers = torch.asarray(batch_multipliers).to(z)
        self.emphasis.z = z
        self.emphasis.after_transformers()
        return self.emphasis.z
