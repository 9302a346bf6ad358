"""Model state for newcomers: serve ours in hashed chunks, download a step's from several donors at once.

The chunking is a function of the size only, so every honest donor announces the same chunk hashes;
the newcomer takes the hash list a strict majority of the answering donors agree on (a lying donor is
outvoted), then fetches chunks round-robin from the agreeing donors in parallel, checks each against
its hash and retries a failed one from the next donor.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable

import torch

from ..btard.tensors import bytes_to_tensor, sha256_hex, tensor_to_bytes
from .client import Client
from .errors import DataPlaneError
from .store import Store

log = logging.getLogger(__name__)

DEFAULT_STATE_CHUNK = 1 << 20  # float32 values per state chunk (4 MiB)
MAX_DONORS = 16  # state donors asked, at most, whatever the site lists


def state_chunk_numel(numel: int) -> int:
    """Values per state chunk: at most 4 MiB, at least 8 chunks for models above 2k values."""
    return max(256, min(DEFAULT_STATE_CHUNK, -(-numel // 8)))


def state_key(step: int) -> str:
    """The key names the step so a newcomer never mixes chunks of two different states."""
    return f"s{step}"


def publish_state(store: Store, step: int, flat_state: torch.Tensor, *, chunk_numel: int | None = None,
                  allowed: Iterable[str] | None = None, meta: dict | None = None) -> None:
    """Serve this peer's flat model state as of ``step`` with per-chunk SHA-256 hashes.

    At least 8 chunks, so even a small model is fetched from several donors at once. The state of
    the previous step stays available too, for a newcomer that asked just as the step ended.
    """
    data = tensor_to_bytes(flat_state)
    numel = len(data) // 4
    if chunk_numel is None:
        chunk_numel = state_chunk_numel(numel)
    hashes = [hashlib.sha256(data[4 * s: 4 * min(numel, s + chunk_numel)]).hexdigest()
              for s in range(0, numel, chunk_numel)] or [hashlib.sha256(b"").hexdigest()]
    info = {"step": step, "numel": numel, "chunk_numel": chunk_numel, "chunks": hashes, **(meta or {})}
    store.keep_states({state_key(step), state_key(step - 1)})
    store.publish(0, "state", state_key(step), data, allowed=allowed, info=info)


async def download_state(client: Client, donors: list[str], *, step: int, numel: int, timeout: float,
                         max_parallel: int = 4) -> tuple[torch.Tensor, dict[str, int], dict]:
    """Download the flat state of ``step`` from several donors at once, not from one.

    Returns the state, the bytes received per donor and the agreed info (chunking plus the ``meta``
    donors published, e.g. the randomness chain). Raises :class:`DataPlaneError` when no majority
    exists or a chunk cannot be obtained.
    """
    key = state_key(step)
    donors = list(dict.fromkeys(donors))[:MAX_DONORS]
    asking = asyncio.Semaphore(max_parallel)

    async def ask(donor: str):
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        async with asking:
            while True:
                try:
                    return donor, await client.fetch_info(donor, step=0, kind="state", key=key,
                                                          wait=timeout * 0.5, timeout=timeout)
                except DataPlaneError as exc:
                    # A donor that has not seen this step's group yet refuses us for a moment.
                    if exc.code == "refused" and "current step" in str(exc) and loop.time() + 1.0 < until:
                        await asyncio.sleep(0.5)
                        continue
                    log.info("state donor %s: %s", donor[:8], exc)
                    return donor, None

    answers = [(d, r) for d, r in await asyncio.gather(*(ask(d) for d in donors))
               if r is not None and (r.info or {}).get("numel") == numel]
    if not answers:
        raise DataPlaneError("not_found", f"no donor serves the state of step {step} with {numel} values")
    canon = {d: json.dumps(r.info, sort_keys=True) for d, r in answers}
    winner, count = Counter(canon.values()).most_common(1)[0]
    info = json.loads(winner)
    chunk_numel, hashes = info.get("chunk_numel"), tuple(info.get("chunks") or ())
    if count * 2 <= len(answers) and len(answers) > 1:
        raise DataPlaneError("hash", "state donors disagree and none has a majority")
    if not isinstance(chunk_numel, int) or chunk_numel <= 0 or len(hashes) != max(1, -(-numel // chunk_numel)):
        raise DataPlaneError("malformed", "donors announced an inconsistent chunking")
    good = [d for d, _ in answers if canon[d] == winner]
    out = bytearray(4 * numel)
    per_donor: Counter[str] = Counter()
    sem = asyncio.Semaphore(max_parallel)

    async def get_chunk(index: int) -> None:
        start = index * chunk_numel
        count_ = min(chunk_numel, numel - start)
        last_error: Exception | None = None
        for attempt in range(len(good)):
            donor = good[(index + attempt) % len(good)]
            try:
                async with sem:
                    data = await client.fetch_bytes(donor, step=0, kind="state", key=key, start=start,
                                                    numel=count_, wait=0.0, timeout=timeout)
            except DataPlaneError as exc:
                last_error = exc
                continue
            if sha256_hex(data) != hashes[index]:  # hashed while the chunk arrived
                last_error = DataPlaneError("hash", f"chunk {index} from {donor[:8]} does not match", peer=donor)
                continue
            out[4 * start: 4 * (start + count_)] = data
            per_donor[donor] += len(data)
            return
        raise last_error or DataPlaneError("not_found", f"chunk {index} unavailable")

    await asyncio.gather(*(get_chunk(i) for i in range(len(hashes)) if numel))
    return bytes_to_tensor(bytes(out), expected_numel=numel), dict(per_donor), info
