"""torchrun for one machine, its rendezvous stores listening on the loopback interface only.

torchrun's ``--standalone`` rendezvous hosts TCPStore servers that listen on every interface, although the run's
processes all live on this machine. Here each store a process hosts listens on a socket bound to 127.0.0.1 and handed
to the store (TCPStore's ``master_listen_fd``); everything else is torchrun's own:

    python -m medverl.training.launch --standalone --nproc_per_node=N -m verl.trainer.sft_trainer ...
"""

from __future__ import annotations

import socket
import sys

import torch.distributed as dist
from torch.distributed import run
from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend

LOOPBACK = "127.0.0.1"
_PARAMETERS = ("host_name", "port", "world_size", "is_master", "timeout", "wait_for_workers", "multi_tenant",
               "master_listen_fd", "use_libuv")


class LoopbackTCPStore(dist.TCPStore):
    """A TCPStore whose server, when this process hosts it, listens on 127.0.0.1 only."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.update(zip(_PARAMETERS, args, strict=False))
        if kwargs.get("is_master") and kwargs.get("master_listen_fd") is None:
            server = socket.create_server((LOOPBACK, int(kwargs.get("port") or 0)))
            kwargs["port"] = server.getsockname()[1]
            kwargs["master_listen_fd"] = server.detach()  # the store owns the socket from now on
        super().__init__(**kwargs)


def main(argv: list[str] | None = None) -> None:
    """Run torchrun with :class:`LoopbackTCPStore` for the stores it hosts."""
    dist.TCPStore = LoopbackTCPStore
    c10d_rendezvous_backend.TCPStore = LoopbackTCPStore
    run.main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
