"""Data-parallel searches on ``torch.distributed``: the calibration images are split over the
ranks ``torchrun`` starts, each rank evaluates every candidate on its share, and the counts the
search decides on (correct images, predicted positions) are summed over ranks. Integer sums are
exact, so every rank takes the same decisions and the plan is the one a single process finds.

    torchrun --standalone --nproc-per-node 2 -m sparsify_cnn model.pt2 --data x.npz --out out/

Rank 0 is the main rank: it alone reads and writes the checkpoint (its records are sent to the
others), measures layer times, verifies the plan and writes the outputs. Collectives run on
gloo: the searches run on CPU tensors. What is sent between ranks is JSON or tensors, never a
pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from . import errors
from .errors import InputError, SparsifyError

TIMEOUT = timedelta(hours=2)  # a rank waits this long for the others (a slow first level on a big model)


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes (``World()``: one process, no collectives)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items; shares differ by at most one."""
        return slice(self.rank * count // self.size, (self.rank + 1) * count // self.size)

    def image_share(self, count: int) -> slice:
        """This rank's share of ``count`` calibration images; every rank needs at least one."""
        if count < self.size:
            raise InputError(f"{count} calibration images cannot be shared by {self.size} ranks: use fewer ranks")
        return self.shard(count)

    def sum(self, values):
        """``values`` (a tensor) summed over ranks: exact for integer tensors."""
        if not self.distributed or values.numel() == 0:
            return values
        import torch.distributed as dist

        total = values.clone().contiguous()
        dist.all_reduce(total)
        return total

    def gather(self, share, count: int):
        """Every rank's ``share`` (a tensor whose first dimension is this rank's ``shard`` of
        ``count`` items) put together in order, on every rank; exact (the others' places are
        zeros in the sum)."""
        if not self.distributed:
            return share
        import torch

        whole = torch.zeros((count, *share.shape[1:]), dtype=share.dtype)
        whole[self.shard(count)] = share
        return self.sum(whole)

    def count(self, value: int) -> int:
        """An integer summed over ranks."""
        import torch

        return int(self.sum(torch.tensor([int(value)], dtype=torch.int64))[0])

    def from_main(self, compute: Callable[[], Any]) -> Any:
        """``compute()`` run on the main rank, its JSON value given to every rank. An error there
        (a ``SparsifyError``) is raised on every rank, so none waits for the others forever."""
        if not self.distributed:
            return compute()
        message = None
        if self.is_main:
            try:
                message = {"value": compute()}
            except SparsifyError as error:
                message = {"error": type(error).__name__, "message": str(error)}
        message = self._broadcast_json(message)
        if "error" in message:
            kind = getattr(errors, message["error"], InputError)
            kind = kind if isinstance(kind, type) and issubclass(kind, SparsifyError) else InputError
            try:
                error = kind(message["message"])
            except TypeError:  # an error type built from more than its message
                error = InputError(message["message"])
            raise self.shared(error)
        return message["value"]

    def check_same(self, text: str, what: str) -> None:
        """Refuse to go on when ranks hold different ``text`` (a fingerprint of ``what``)."""
        if not self.distributed:
            return
        import torch
        import torch.distributed as dist

        digest = torch.tensor([int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")], dtype=torch.int64)
        low, high = digest.clone(), digest.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if int(low[0]) != int(high[0]):
            raise self.shared(InputError(f"the {self.size} ranks loaded different {what}: give every rank the same "
                                          "files and options"))  # fmt: skip

    def shared(self, error: SparsifyError) -> SparsifyError:
        """``error``, raised alike on every rank: the main rank prints it, the others exit with its
        code without printing it again (``cli.main`` reads ``told_by_main``)."""
        error.told_by_main = not self.is_main
        return error

    def _broadcast_json(self, message) -> dict:
        import torch
        import torch.distributed as dist

        data = json.dumps(message).encode() if self.is_main else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, src=0)
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.is_main else torch.empty(int(size[0]), dtype=torch.uint8)
        dist.broadcast(buffer, src=0)
        return json.loads(bytes(buffer.numpy()).decode())


SINGLE = World()


def environment_world() -> World:
    """The world ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``), without
    joining it: one process when it describes none."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise InputError("WORLD_SIZE and RANK must be integers (set by torchrun)") from None
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"RANK {rank} is not a rank of WORLD_SIZE {size} (set by torchrun)")
    return World(rank, size)


def ranks_on_this_machine() -> int:
    """How many ranks torchrun started on this machine (``LOCAL_WORLD_SIZE``); 1 without it."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def join() -> World:
    """Join the process group ``torchrun`` set up (gloo), or stay one process without one."""
    world = environment_world()
    if not world.distributed:
        return world
    import torch.distributed as dist

    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise InputError(f"WORLD_SIZE is {world.size} but {' and '.join(missing)} is not set: launch with torchrun")
    if not dist.is_initialized():
        try:
            dist.init_process_group("gloo", rank=world.rank, world_size=world.size, timeout=TIMEOUT)
        except (RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(f"cannot join the {world.size} ranks at {os.environ['MASTER_ADDR']}:"
                             f"{os.environ['MASTER_PORT']}: {first}") from None  # fmt: skip
    return world


def leave() -> None:
    """Leave the process group, if this process joined one, once every rank is leaving: a rank
    that tore gloo down while the main rank still verified aborted at exit now and then
    (``terminate called without an active exception``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:  # another rank is gone already: nothing to wait for
            pass
        dist.destroy_process_group()
