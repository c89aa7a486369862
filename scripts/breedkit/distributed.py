"""torch.distributed set-up: torchrun, or one process per instance of a SageMaker job.

One process (no WORLD_SIZE, or WORLD_SIZE=1) runs without a process group at all, so a plain
``python train.py`` and ``torchrun --nproc_per_node 1 train.py`` behave the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def sagemaker_multi_host(environ=os.environ) -> dict | None:
    """torch.distributed settings for a multi-instance SageMaker job started without torchrun.

    SageMaker runs the script once per instance and describes the cluster in SM_HOSTS and
    SM_CURRENT_HOST; one process per instance joins a process group led by the first host.
    This works on CPU and GPU instances alike (SageMaker's torch_distributed launcher is
    GPU/Trainium only). Returns None for single-instance jobs or under torchrun.
    """
    import json

    if "WORLD_SIZE" in environ or not environ.get("SM_HOSTS"):
        return None
    hosts = json.loads(environ["SM_HOSTS"])
    if len(hosts) < 2:
        return None
    return {"WORLD_SIZE": str(len(hosts)), "RANK": str(hosts.index(environ["SM_CURRENT_HOST"])),
            "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": environ.get("MASTER_ADDR", hosts[0]),
            "MASTER_PORT": environ.get("MASTER_PORT", "29500")}


def init(device: str = "auto") -> DistEnv:
    os.environ.update(sagemaker_multi_host() or {})
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a few numbers over all processes (float64, so counts stay exact)."""
    if not env.enabled:
        return list(values)
    device = env.device if env.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    return dist.get_rank() if _joined() else 0


def broadcast_object(obj):
    """Rank 0's (picklable) object, on every rank; collective under a process group."""
    if not _joined():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """The smallest of a one-element tensor over all processes (itself with one process).

    Collective: every rank of an initialized process group must call it.
    """
    if not _joined():
        return tensor
    reduced = tensor.detach().clone()
    if dist.get_backend() == "gloo" and reduced.is_cuda:
        reduced = reduced.cpu()
    dist.all_reduce(reduced, op=dist.ReduceOp.MIN)
    return reduced


def broadcast_flag(flag: bool, env: DistEnv) -> bool:
    """Rank 0's decision (e.g. early stop) for everyone."""
    if not env.enabled:
        return flag
    device = env.device if env.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
