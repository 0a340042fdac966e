"""An OLMo transformer with the parameter names of allenai/OLMo ``olmo/model.py``.

``transformer.wte``, ``transformer.blocks.{i}.{attn_norm, att_proj, attn_out,
ff_norm, ff_proj, ff_out}``, ``transformer.ln_f`` and, without weight tying,
``transformer.ff_out``. ``att_proj`` is the fused q/k/v projection and
``ff_proj`` the fused SwiGLU projection (2 x hidden), so ``ff_out`` takes
``hidden = mlp_ratio * d_model / 2`` inputs: its fan-in differs from d_model,
as in OLMo (``act.output_multiplier = 0.5``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OLMoSequentialBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, include_bias: bool):
        super().__init__()
        self.n_heads = n_heads
        hidden = mlp_ratio * d_model
        self.attn_norm = nn.LayerNorm(d_model, bias=include_bias)
        self.att_proj = nn.Linear(d_model, 3 * d_model, bias=include_bias)
        self.attn_out = nn.Linear(d_model, d_model, bias=include_bias)
        self.ff_norm = nn.LayerNorm(d_model, bias=include_bias)
        self.ff_proj = nn.Linear(d_model, hidden, bias=include_bias)
        self.ff_out = nn.Linear(hidden // 2, d_model, bias=include_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.att_proj(self.attn_norm(x)).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, -1).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.attn_out(att)
        value, gate = self.ff_proj(self.ff_norm(x)).chunk(2, dim=-1)
        return x + self.ff_out(F.silu(gate) * value)


class OLMo(nn.Module):
    """OLMo with sequential blocks; learned positions (``wpe``) only when ``rope`` is off."""

    def __init__(self, vocab_size: int = 50304, d_model: int = 4096, n_layers: int = 32, n_heads: int = 32,
                 mlp_ratio: int = 4, max_sequence_length: int = 2048, include_bias: bool = False,
                 weight_tying: bool = False, rope: bool = True):
        super().__init__()
        self.d_model, self.n_layers = d_model, n_layers
        modules = dict(wte=nn.Embedding(vocab_size, d_model))
        if not rope:
            modules["wpe"] = nn.Embedding(max_sequence_length, d_model)
        modules["blocks"] = nn.ModuleList(OLMoSequentialBlock(d_model, n_heads, mlp_ratio, include_bias)
                                          for _ in range(n_layers))
        modules["ln_f"] = nn.LayerNorm(d_model, bias=include_bias)
        if not weight_tying:
            modules["ff_out"] = nn.Linear(d_model, vocab_size, bias=include_bias)
        self.transformer = nn.ModuleDict(modules)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.transformer.wte(input_ids)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(input_ids.shape[1], device=x.device))
        for block in self.transformer.blocks:
            x = block(x)
        x = self.transformer.ln_f(x)
        if "ff_out" in self.transformer:
            return self.transformer.ff_out(x)
        return F.linear(x, self.transformer.wte.weight)


def olmo_tiny(**overrides) -> OLMo:
    """A small OLMo for tests: 4 layers, 256 wide, vocabulary 1000."""
    config = dict(vocab_size=1000, d_model=256, n_layers=4, n_heads=4, max_sequence_length=64)
    config.update(overrides)
    return OLMo(**config)
