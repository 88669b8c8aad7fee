"""Many processes for one model job (``torchrun --nproc_per_node P -m curate rank|sample|audit``).

torchrun starts P processes with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set.

* ``rank`` scores the rows of each process's own shard (``curate.shards``: ``blake2b(sample_id)
  mod P == RANK``) and writes them as shard RANK of P; after a barrier process 0 merges,
  reading the shards in sample_id order, so the table is the one a single process writes. The
  rows travel through the run folder, so a killed job resumes from the shards it finished.
* ``sample`` and ``audit`` split the generations by batch (``curate.models.sampling.sample``'s
  ``part``): each process draws whole batches, exactly as one process would, and
  :meth:`Launch.gather` brings every process's rows to all of them, where process 0 writes
  the outputs.

The collectives are a barrier and an object gather (gloo on CPU, NCCL on GPUs).

Not ``accelerate launch --cpu --num_processes 2``: with ``--cpu`` accelerate starts a single
process (huggingface/accelerate issue 2741). Use torchrun, or accelerate with ``--multi_gpu``
and ``cpu=True`` in its config file.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass

from curate.errors import UsageError

# A barrier waits for the slowest process's whole shard, not one collective op.
BARRIER_TIMEOUT = _dt.timedelta(hours=48)


@dataclass
class Launch:
    """This process's place in a torchrun job (``world == 1``: not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    _group: bool = False

    @classmethod
    def from_env(cls, device: str) -> Launch:
        """Read torchrun's variables; join the process group when there is more than one."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise UsageError(
                "WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)"
            ) from None
        if world <= 1:
            return cls(device=device)
        import torch
        import torch.distributed as dist

        if device.startswith("cuda"):
            device = f"cuda:{local}"  # one GPU per process
            torch.cuda.set_device(local)
            backend = "nccl"
        else:
            backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
        return cls(rank=rank, world=world, local_rank=local, device=device, _group=True)

    @property
    def part(self) -> tuple[int, int] | None:
        """``(rank, world)`` for ``sample(..., part=...)``; None in one process."""
        return (self.rank, self.world) if self.world > 1 else None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, obj):
        """Every process's ``obj``, in rank order (``[obj]`` in one process). Objects travel
        pickled through the process group (CPU tensors; move GPU tensors off first)."""
        if not self._group:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self._group:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self._group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._group = False
