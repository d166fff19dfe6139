"""Data-parallel training over torch.distributed (``torchrun``): the process group, which rank does what, collectives.

Every rank runs the same selection; candidates, prompts and groups are split into contiguous blocks by rank, so
gathering the blocks in rank order gives back the one-process order. Weights: replicated (``ddp``) or FSDP2-sharded.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

T = TypeVar("T")

# a rank waits this long for the others (rank 0 alone evaluates and writes checkpoints meanwhile)
TIMEOUT = datetime.timedelta(hours=3)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. ``Dist()`` is the single-process job (every collective is a no-op).

    ``active`` is True whenever torch.distributed runs (``torchrun``, even with one process): rollouts are then
    seeded per prompt, so the samples (and with them every metric) do not depend on the number of ranks.
    """

    rank: int = 0
    world_size: int = 1
    active: bool = False
    fsdp: bool = False             # parameters sharded with FSDP2 (fully_shard) instead of replicated

    def lockstep(self, n: int) -> int:
        """The most micro-batches any rank has: under FSDP every rank must run as many forwards/backwards."""
        if not (self.fsdp and self.world_size > 1):
            return n
        t = torch.tensor([n], dtype=torch.int64, device=_comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """[lo, hi) of ``rank``'s contiguous block of n items (block sizes differ by at most one)."""
        r = self.rank if rank is None else rank
        return n * r // self.world_size, n * (r + 1) // self.world_size

    def shard(self, items: Sequence[T]) -> list[T]:
        lo, hi = self.bounds(len(items))
        return list(items[lo:hi])

    def gather(self, local: list) -> list:
        """Every rank's ``local`` list, concatenated in rank order, on every rank (pickled objects)."""
        if not self.active or self.world_size == 1:
            return list(local)
        parts: list = [None] * self.world_size
        torch.distributed.all_gather_object(parts, local)
        return [x for part in parts for x in part]

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (through the backend's device and back)."""
        if self.active and self.world_size > 1:
            buf = tensor.to(_comm_device())
            torch.distributed.all_reduce(buf)
            tensor.copy_(buf)
        return tensor

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Sum of each float over ranks (float64)."""
        t = self.all_reduce_sum_(torch.tensor(list(values), dtype=torch.float64))
        return t.tolist()

    def sync_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients over ranks (DDP's all-reduce, done once per optimizer step, in 64 MiB buckets).

        The losses are already normalised by global token / sequence counts, so the sum (not the mean) is the
        gradient of the global batch loss. A parameter without a gradient gets zeros first. Under FSDP the
        backward already reduce-scattered the gradients as a mean over ranks: they are multiplied back to the sum.
        """
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.fsdp:
            if self.world_size > 1:
                for p in params:
                    p.grad.mul_(self.world_size)
            return
        if not self.active or self.world_size == 1:
            return
        bucket: list[torch.Tensor] = []
        size = 0
        for p in params:
            bucket.append(p.grad)
            size += p.grad.numel() * p.grad.element_size()
            if size >= 64 << 20:
                self._reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            self._reduce_bucket(bucket)

    def _reduce_bucket(self, grads: list[torch.Tensor]) -> None:
        flat = torch.cat([g.reshape(-1) for g in grads]).to(_comm_device())
        torch.distributed.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Rank 0's weights on every rank (the replicas start equal whatever each rank loaded)."""
        if not self.active or self.world_size == 1:
            return
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                buf = t.detach().to(_comm_device())
                torch.distributed.broadcast(buf, src=0)
                t.copy_(buf)

    def barrier(self) -> None:
        if self.active and self.world_size > 1:
            torch.distributed.barrier()


def _comm_device() -> torch.device:
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device, parallel: str = "auto") -> Dist:
    """Join the process group ``torchrun`` set up in the environment (gloo on CPU, nccl on CUDA); ``Dist()`` if none.

    On CUDA each rank takes the GPU numbered by LOCAL_RANK (``device`` must then be ``cuda``). ``parallel``:
    ``ddp`` (replicas), ``fsdp`` (FSDP2 shards, see :func:`shard_model`), ``auto`` = fsdp on CUDA, ddp on CPU.
    """
    if parallel not in ("auto", "ddp", "fsdp"):
        raise ValueError(f"parallel: expected auto, ddp or fsdp, got {parallel!r}")
    if not launched_by_torchrun():
        return Dist()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.distributed.init_process_group(backend=backend, timeout=TIMEOUT)
    fsdp = parallel == "fsdp" or (parallel == "auto" and device.type == "cuda")
    return Dist(rank=rank, world_size=world, active=True, fsdp=fsdp)


# --- FSDP2 --------------------------------------------------------------------------------------------------------

def shard_model(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """FSDP2: ``fully_shard`` each decoder layer (the model's ``_no_split_modules`` classes), then the whole model.

    The root (embeddings, final norm, the tied or untied lm_head) stays unsharded from its forward to its backward,
    which lets the fused head read ``lm_head.weight`` after the forward (prepo.logprobs). One forward through the root
    initialises FSDP's state on every rank. No-op unless ``dist.fsdp``.
    """
    if not dist.fsdp:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.world_size,))
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(f"model ({type(model).__name__}): no decoder layers to shard (_no_split_modules is empty)")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device))
    model.reshard()  # the root keeps its gathered parameters after a forward: back to the shards the optimizer takes
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def full_weights(model: torch.nn.Module):
    """Within: every FSDP unit's full parameters are gathered and kept, so forwards need no collectives (ranks may
    run different numbers of them: scoring, ``generate``, evaluation). Every rank must enter together. No-op for a
    model that is not sharded."""
    if not is_sharded(model):
        yield model
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(unit is not model, recurse=False)  # the root keeps its own until backward


def teardown(dist: Dist) -> None:
    """Leave the process group once every rank is done (a rank that left early would break the others' last calls)."""
    if dist.active and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
