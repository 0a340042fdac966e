"""Sharded training launcher: build on meta, fully_shard, initialize with initspec, train.

    torchrun --nproc_per_node 2 examples/fsdp_train.py                 # CPU / gloo
    torchrun --nproc_per_node 8 examples/fsdp_train.py --device cuda --model gpt2_small
    torchrun --nproc_per_node 2 examples/fsdp_train.py --save seed.safetensors   # also write the init
    torchrun --nproc_per_node 2 examples/fsdp_train.py --load seed.safetensors   # start from a seed file

No rank ever holds the whole model: parameters are created on the meta device
(no memory, no default init), sharded by FSDP2, and each rank fills only its
shard from initspec's per-parameter streams. The gathered weights are bitwise
what one process gets from ``initspec.apply(model, spec)`` with the same seed,
whatever the number of ranks.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import initspec
from initspec.models.gpt import gpt2_small, gpt_tiny

MODELS = {"gpt_tiny": gpt_tiny, "gpt2_small": gpt2_small}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt_tiny")
    parser.add_argument("--spec", default="gpt2", help="preset name, YAML path (default: the gpt2 preset)")
    parser.add_argument("--seed", type=int, default=0, help="initspec seed (the same on every rank)")
    parser.add_argument("--streams", choices=("fast", "portable"), default=None,
                        help="override the spec's streams mode (portable: identical values on any device)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=4, help="sequences per rank")
    parser.add_argument("--save", help="write the initialized model as a seed checkpoint (before training)")
    parser.add_argument("--load", help="start from this seed checkpoint instead of the spec")
    return parser.parse_args()


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(device.type, (world,))

    with torch.device("meta"):
        model = MODELS[args.model]()
    spec = initspec.load_spec(args.spec, vars={"n_layer": model.n_layer})
    if args.streams:
        spec = spec.model_copy(update={"streams": args.streams})

    # Ties first (FSDP2 must see one parameter), then shard: tied modules stay in one group,
    # here the root, which holds wte and lm_head; each block is its own group.
    if args.load:
        initspec.distributed.tie(model, args.load)
    else:
        initspec.distributed.tie(model, spec, seed=args.seed)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)

    start = time.perf_counter()
    if args.load:
        initspec.load_checkpoint(model, args.load, device=device)
        source = args.load
    else:
        report = initspec.apply(model, spec, seed=args.seed, device=device)
        source = f"spec {args.spec!r} seed {args.seed} streams {report.plan.streams}"
    seconds = time.perf_counter() - start
    tied = model.lm_head.weight is model.transformer.wte.weight
    local = sum(p.to_local().numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    print(f"rank {rank}/{world}: initialized {local}/{total} values from {source} in {seconds:.3f} s; "
          f"lm_head tied to wte: {tied}", flush=True)
    if args.save:
        initspec.save_checkpoint(model, args.save, None if args.load else report.plan)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    vocab = model.transformer.wte.num_embeddings
    data = torch.Generator().manual_seed(1000 + rank)    # each rank trains on its own batch
    tokens = torch.randint(0, vocab, (args.batch, 17), generator=data).to(device)
    for step in range(args.steps):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0:
            print(f"step {step} loss {float(mean) / world:.4f}", flush=True)
    assert model.lm_head.weight is model.transformer.wte.weight, "the tie did not survive training"
    dist.barrier()                 # every rank done with its collectives before the group goes
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
