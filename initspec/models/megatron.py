"""A GPT with Megatron-core's parameter names (the local, non-Transformer-Engine layer spec).

``embedding.word_embeddings``, ``embedding.position_embeddings``,
``decoder.layers.{i}.input_layernorm``, ``...self_attention.linear_qkv``,
``...self_attention.linear_proj``, ``...pre_mlp_layernorm``, ``...mlp.linear_fc1``,
``...mlp.linear_fc2``, ``decoder.final_layernorm`` and ``output_layer``, as in
``megatron/core/models/gpt/gpt_model.py`` with ``get_gpt_layer_local_spec()``.
With ``share_embeddings_and_output_weights`` (Megatron's default) the output layer
has no weight of its own and multiplies by the word embeddings, as there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, hidden_size: int, num_attention_heads: int, bias: bool):
        super().__init__()
        self.heads = num_attention_heads
        self.linear_qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=bias)
        self.linear_proj = nn.Linear(hidden_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.linear_qkv(x).split(c, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.linear_proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, ffn_hidden_size: int, bias: bool):
        super().__init__()
        self.linear_fc1 = nn.Linear(hidden_size, ffn_hidden_size, bias=bias)
        self.linear_fc2 = nn.Linear(ffn_hidden_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class TransformerLayer(nn.Module):
    def __init__(self, hidden_size: int, num_attention_heads: int, ffn_hidden_size: int, bias: bool):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(hidden_size)
        self.self_attention = SelfAttention(hidden_size, num_attention_heads, bias)
        self.pre_mlp_layernorm = nn.LayerNorm(hidden_size)
        self.mlp = MLP(hidden_size, ffn_hidden_size, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention(self.input_layernorm(x))
        return x + self.mlp(self.pre_mlp_layernorm(x))


class TransformerBlock(nn.Module):
    def __init__(self, num_layers: int, hidden_size: int, num_attention_heads: int, ffn_hidden_size: int,
                 bias: bool):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(hidden_size, num_attention_heads, ffn_hidden_size, bias)
                                    for _ in range(num_layers))
        self.final_layernorm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.final_layernorm(x)


class Embedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, max_sequence_length: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_sequence_length, hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.word_embeddings(tokens) + self.position_embeddings(positions)


class GPTModel(nn.Module):
    """Megatron-core ``GPTModel`` (learned absolute positions, LayerNorm, GeLU MLP)."""

    def __init__(self, vocab_size: int = 50304, hidden_size: int = 1024, num_layers: int = 24,
                 num_attention_heads: int = 16, ffn_hidden_size: int | None = None,
                 max_sequence_length: int = 2048, add_bias_linear: bool = True,
                 share_embeddings_and_output_weights: bool = True):
        super().__init__()
        self.num_layers = num_layers
        self.embedding = Embedding(vocab_size, hidden_size, max_sequence_length)
        self.decoder = TransformerBlock(num_layers, hidden_size, num_attention_heads,
                                        ffn_hidden_size or 4 * hidden_size, add_bias_linear)
        self.share = share_embeddings_and_output_weights
        self.output_layer = None if self.share else nn.Linear(hidden_size, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.decoder(self.embedding(tokens))
        return F.linear(h, self.embedding.word_embeddings.weight) if self.share else self.output_layer(h)


def megatron_tiny(**overrides) -> GPTModel:
    """A small Megatron GPT for tests: 4 layers, 256 wide, vocabulary 1000."""
    config = dict(vocab_size=1000, hidden_size=256, num_layers=4, num_attention_heads=4, max_sequence_length=64)
    config.update(overrides)
    return GPTModel(**config)
