"""The worker's data plane: bulk tensors over hivemind P2P (the :class:`DataPlane` facade in
:mod:`.dataplane` over :mod:`.store`, :mod:`.server`, :mod:`.client` and :mod:`.state_transfer`)."""

from .client import handler_name, split_p2p_addr
from .dataplane import DataPlane
from .errors import DataPlaneError

__all__ = ["DataPlane", "DataPlaneError", "handler_name", "split_p2p_addr"]
