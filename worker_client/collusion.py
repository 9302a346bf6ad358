"""A coalition of Byzantine workers that run in separate processes (testing only: ``--behaviour``).

The simulator hands every colluder one :class:`~worker_client.btard.attacks.Collusion` object; networked
workers each build their own peer, so they share a file instead: every colluding worker is started with
the same ``BTARD_COLLUSION`` path, the driver builds a :class:`SharedCollusion` on it
(:func:`collusion_from_env`) and passes it to ``attacks.make_peer(..., collusion=)``. The file holds
``{"seed": int, "members": [peer ids]}``: the common seed, and each colluder's peer id, added as it
joins. This lives outside ``worker_client/btard/``: the protocol core does no I/O.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path

from .btard.attacks import Collusion

# The coordination channel of colluders that run in separate processes: the path of one JSON file.
COLLUSION_ENV = "BTARD_COLLUSION"


class SharedCollusion(Collusion):
    """A coalition across processes: every colluder is given the same file. The file fixes the common
    ``seed`` (a missing one is 0); each colluder adds its peer id when it joins, under an exclusive lock,
    and reads the others' ids whenever it needs them, so colluders started in any order know each other
    from their first step together. What cannot travel through a file (the step's honest gradients)
    stays empty: behaviours that need it fall back to their own gradient, as in a one-peer coalition."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._cache: tuple[tuple[int, int, int], set[str]] | None = None
        super().__init__(members=set(), seed=int(self._read().get("seed", 0)))

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def members(self) -> set[str]:  # type: ignore[override]
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return set(self._local)
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._cache is None or self._cache[0] != key:
            ids = self._read().get("members", [])
            self._cache = (key, {p for p in ids if isinstance(p, str)})
        return self._cache[1] | self._local

    @members.setter
    def members(self, value: set[str]) -> None:
        self._local = set(value)

    def join(self, peer_id: str) -> None:
        """Add ``peer_id`` to the file: under an exclusive lock (a ``.lock`` beside it), written whole to a
        temporary file and renamed over it, so a colluder reading at any moment sees a complete file."""
        self._local.add(peer_id)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            ids = [p for p in data.get("members", []) if isinstance(p, str)]
            if peer_id not in ids:
                ids.append(peer_id)
            data["members"] = ids
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        self._cache = None


def collusion_from_env(environ: Mapping[str, str] = os.environ) -> SharedCollusion | None:
    """The coalition this worker process belongs to (``BTARD_COLLUSION``), or None (on its own)."""
    path = environ.get(COLLUSION_ENV)
    return SharedCollusion(path) if path else None
