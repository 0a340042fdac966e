"""A transformers model built empty with accelerate, then initialized by initspec on the device.

    python examples/accelerate_init.py                         # tiny GPT-2, the gpt2 preset, CPU
    python examples/accelerate_init.py --layers 12 --width 768 --device cuda

``init_empty_weights()`` puts every parameter on the meta device (no memory, no
``_init_weights``) while buffers stay real; ``initspec.apply(..., device=)``
gives each unique parameter storage once and fills it from its own stream, so
the weights are bitwise those of ``initspec.apply`` on a normally built model.
"""
from __future__ import annotations

import argparse

import torch
from accelerate import init_empty_weights
from transformers import GPT2Config, GPT2LMHeadModel

import initspec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    config = GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=4, vocab_size=512, n_positions=64)
    with init_empty_weights():
        model = GPT2LMHeadModel(config)
    model.tie_weights()                   # accelerate's empty parameters come untied: tie lm_head to wte again
    report = initspec.apply(model, "gpt2", vars={"n_layer": config.n_layer}, device=args.device)
    print(report.explain())

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, config.vocab_size, (4, 33), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(args.device)
    for step in range(args.steps):
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step} loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
