"""The worker's data plane: bulk tensors over hivemind P2P (see :mod:`worker_client.net.dataplane`)."""

from .dataplane import DataPlane, DataPlaneError, handler_name, split_p2p_addr

__all__ = ["DataPlane", "DataPlaneError", "handler_name", "split_p2p_addr"]
