"""The WebUI's "sdp" cross-attention optimisation (v1.10.1, its default on torch 2 without xformers): ldm's
CrossAttention and the VAE's AttnBlock computed by ``scaled_dot_product_attention`` (ldm's own attention holds
the whole attention matrix, which no GPU holds at 2048²). The forwards are the WebUI's, less its upcast option."""

import contextlib

import torch
from einops import rearrange


def scaled_dot_product_attention_forward(self, x, context=None, mask=None, **kwargs):
    batch_size, sequence_length, inner_dim = x.shape
    h = self.heads
    q_in = self.to_q(x)
    context = x if context is None else context
    k_in = self.to_k(context)
    v_in = self.to_v(context)
    head_dim = inner_dim // h
    q = q_in.view(batch_size, -1, h, head_dim).transpose(1, 2)
    k = k_in.view(batch_size, -1, h, head_dim).transpose(1, 2)
    v = v_in.view(batch_size, -1, h, head_dim).transpose(1, 2)
    del q_in, k_in, v_in
    dtype = q.dtype
    hidden_states = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, h * head_dim).to(dtype)
    hidden_states = self.to_out[0](hidden_states)
    return self.to_out[1](hidden_states)


def sdp_attnblock_forward(self, x):
    h_ = self.norm(x)
    q, k, v = self.q(h_), self.k(h_), self.v(h_)
    b, c, h, w = q.shape
    q, k, v = (rearrange(t, "b c h w -> b (h w) c").contiguous() for t in (q, k, v))
    dtype = q.dtype
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False).to(dtype)
    out = rearrange(out, "b (h w) c -> b c h w", h=h)
    return x + self.proj_out(out)


@contextlib.contextmanager
def sdp_attention():
    """ldm's attention classes use the forwards above inside the block (as ``SdOptimizationSdp.apply()``)."""
    import ldm.modules.attention
    import ldm.modules.diffusionmodules.model

    patched = [(ldm.modules.attention.CrossAttention, scaled_dot_product_attention_forward),
               (ldm.modules.diffusionmodules.model.AttnBlock, sdp_attnblock_forward)]
    originals = [(cls, cls.forward) for cls, _ in patched]
    for cls, forward in patched:
        cls.forward = forward
    try:
        yield
    finally:
        for cls, forward in originals:
            cls.forward = forward
