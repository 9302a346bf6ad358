"""Who is who on the data plane: protocol peer id -> (hivemind p2p id, announced addresses).

Only peers in the directory are served (:mod:`.server`) or dialled by name (:mod:`.client`). Entries
are tagged with the latest step whose group named them; :meth:`Directory.forget_before` drops the ones
no group of the last two steps named, and the whole is capped at :data:`MAX_DIRECTORY`.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import DataPlaneError

MAX_DIRECTORY = 4096  # peers known at once; beyond that the ones named longest ago are dropped
MAX_ADDRS_KEPT = 16


class Directory:
    def __init__(self) -> None:
        self.peers: dict[str, tuple[str, list[str]]] = {}  # peer id -> (p2p id, addrs)
        self.by_p2p: dict[str, str] = {}  # p2p id -> peer id
        self.named_at: dict[str, int] = {}  # peer id -> the latest step a group named it in

    def update(self, peers: Mapping[str, tuple[str, list[str]]], *, step: int) -> None:
        for peer_id, (p2p_id, addrs) in peers.items():
            if not p2p_id or not isinstance(p2p_id, str) or not isinstance(peer_id, str):
                continue
            old = self.peers.get(peer_id)
            if old is not None and old[0] != p2p_id and self.by_p2p.get(old[0]) == peer_id:
                del self.by_p2p[old[0]]
            self.peers[peer_id] = (p2p_id, [a for a in addrs if isinstance(a, str)][:MAX_ADDRS_KEPT])
            self.by_p2p[p2p_id] = peer_id
            self.named_at[peer_id] = max(step, self.named_at.get(peer_id, step))
        if len(self.peers) > MAX_DIRECTORY:  # a site naming ever new peers at far steps
            for peer_id in sorted(self.named_at, key=self.named_at.get)[: len(self.peers) - MAX_DIRECTORY]:
                self.drop(peer_id)

    def drop(self, peer_id: str) -> None:
        self.named_at.pop(peer_id, None)
        p2p_id, _ = self.peers.pop(peer_id, ("", []))
        if self.by_p2p.get(p2p_id) == peer_id:
            del self.by_p2p[p2p_id]

    def forget_before(self, step: int) -> None:
        for peer_id in [p for p, named in self.named_at.items() if named < step - 1]:
            self.drop(peer_id)

    def knows(self, p2p_id: str) -> bool:
        return p2p_id in self.by_p2p

    def peer_of(self, p2p_id: str) -> str | None:
        return self.by_p2p.get(p2p_id)

    def resolve(self, peer: str) -> tuple[str, list[str]]:
        if peer in self.peers:
            return self.peers[peer]
        raise DataPlaneError("unreachable", f"peer {peer[:8]} is not in the directory", peer=peer)
