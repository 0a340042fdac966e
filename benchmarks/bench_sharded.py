"""Target 5: FSDP2-sharded init of GPT-2 small on 2 gloo ranks vs one process.

Two rank processes (torch.multiprocessing, gloo on loopback) each build GPT-2
small on the meta device, ``fully_shard`` every block and the root (``wte`` and
the tied ``lm_head`` stay in the root's group), and time
``initspec.apply(model, "gpt2", device="cpu", threads=1)``: each rank materializes
and fills only its ``Shard(0)`` rows. The per-rank time is the slower rank's.

The baseline is the same apply on an unsharded meta-built model in the parent
process with the same per-process thread count (one fill thread: two ranks on
two cores get one core each). Parent and ranks take turns, synchronized by a
barrier, so each sharded measurement is paired with a single-process one taken
right after it; the idle side waits on a semaphore, not a spinning loop. Every
timed apply starts after ``gc.collect()`` (as in the other benchmarks): FSDP2's
``fully_shard`` leaves reference cycles, so without it each rank would carry the
previous repetitions' models as garbage and run slower each time. A
second, informational row compares with a single process using both cores
(two fill threads, every other repetition). Finally the ranks all-gather
every parameter and rank 0 checks it bitwise against a single-process apply.
"""
from __future__ import annotations

import gc
import os
import socket
import time

import torch

from .common import REPEATS, Row, main, med, ms, paired_ratio

N_LAYER = 12
PAIRS = REPEATS + 4   # the ranks need both cores, so load elsewhere moves this ratio most: more pairs


def _meta_gpt2():
    from initspec.models.gpt import gpt2_small
    with torch.device("meta"):
        return gpt2_small()


def _rank(rank: int, port: int, barrier, queue) -> None:
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    import initspec
    from torch.distributed.fsdp import fully_shard
    spec = initspec.load_spec("gpt2", vars={"n_layer": N_LAYER})

    def sharded():
        model = _meta_gpt2()
        if hasattr(initspec, "distributed"):     # the documented flow: the spec's ties before fully_shard
            initspec.distributed.tie(model, spec)
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
        return model

    initspec.apply(sharded(), spec, device="cpu", threads=1)     # warm-up
    for _ in range(PAIRS):
        model = sharded()
        gc.collect()     # as timed() does: fully_shard leaves reference cycles, so the last repetition's
        barrier.wait()   # model is garbage until collected (uncollected, each repetition ran ~0.1 s slower)
        start, cpu = time.perf_counter(), time.process_time()
        initspec.apply(model, spec, device="cpu", threads=1)
        queue.put(("time", rank, (time.perf_counter() - start, time.process_time() - cpu)))
        del model
        barrier.wait()                      # parent measures while the ranks wait here
        barrier.wait()
    model = sharded()
    initspec.apply(model, spec, device="cpu", threads=1)
    full = {name: p.full_tensor() for name, p in model.named_parameters()}
    tied = model.lm_head.weight is model.transformer.wte.weight
    if rank == 0:
        reference = _meta_gpt2()
        initspec.apply(reference, spec, device="cpu", threads=1)
        equal = all(torch.equal(p.detach(), full[name]) for name, p in reference.named_parameters())
        queue.put(("equal", rank, equal and tied and len(full) == len(dict(reference.named_parameters()))))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run() -> list[Row]:
    import torch.multiprocessing as mp
    import initspec
    spec = initspec.load_spec("gpt2", vars={"n_layer": N_LAYER})
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, barrier, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    initspec.apply(_meta_gpt2(), spec, device="cpu", threads=1)      # warm-up
    single, single2, per_rank, cpu_rank, cpu_single = [], [], [], [], []
    for i in range(PAIRS):
        barrier.wait()                      # ranks run
        barrier.wait()
        ranks = [queue.get(timeout=300)[2] for _ in range(2)]
        per_rank.append(max(wall for wall, _ in ranks))
        cpu_rank.append(max(cpu for _, cpu in ranks))
        model = _meta_gpt2()
        gc.collect()
        start, cpu = time.perf_counter(), time.process_time()
        initspec.apply(model, spec, device="cpu", threads=1)
        single.append(time.perf_counter() - start)
        cpu_single.append(time.process_time() - cpu)
        del model
        if i % 2 == 0:                      # the context row: every other repetition
            model = _meta_gpt2()
            gc.collect()
            start = time.perf_counter()
            initspec.apply(model, spec, device="cpu", threads=2)
            single2.append(time.perf_counter() - start)
            del model
        barrier.wait()
    equal = queue.get(timeout=300)[2]
    for p in procs:
        p.join(timeout=120)
    ok = equal and all(p.exitcode == 0 for p in procs)
    return [
        Row("5. sharded init per rank (2 gloo ranks, FSDP2) vs single process, 1 thread each",
            paired_ratio(per_rank, single), 0.6,
            f"slower rank {ms(med(per_rank))} vs single process {ms(med(single))} (same 1 fill thread per "
            f"process: 2 ranks on 2 cores get one core each; the ranks need both cores, the single process one, "
            f"so other load on the machine weighs on the ranks: CPU-time ratio "
            f"{paired_ratio(cpu_rank, cpu_single):.3f}); gathered result bitwise equal: {'yes' if equal else 'NO'}",
            ok),
        Row("5b. sharded per rank vs single process with 2 fill threads (context)",
            paired_ratio(per_rank[::2], single2), None,
            f"single process, 2 threads: {ms(med(single2))}"),
    ]


if __name__ == "__main__":
    main(run, "benchmarks.bench_sharded")
