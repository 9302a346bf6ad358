"""A small in-memory swarm with synthetic gradients, for fast protocol tests (no model, no dataset).

The "gradient" of a peer is a deterministic function of (model state, public seed), so validators and
verdicts can recompute it exactly, like a real task on one machine.
"""

from __future__ import annotations

import random

import torch

from btard_wire.envelope import Identity
from worker_client.btard import protocol as P
from worker_client.btard.attacks import Collusion
from worker_client.btard.mprng import genesis_randomness
from worker_client.transports.memory import build_swarm, seeded_bytes, seeded_nonces

RUN = "test-run"


def synthetic_gradient(model_ref: int, seed: int, numel: int, flip: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed((seed * 31 + int(model_ref) * 1_000_003) & ((1 << 62) - 1))
    g = torch.randn(numel, generator=gen) * 0.05 + 0.02
    return -g if flip else g


class Swarm:
    """``n`` peers, the ones at ``byzantine`` indices running ``attack``; one :meth:`step` at a time."""

    def __init__(self, n: int = 5, *, attack: str | None = None, byzantine: tuple[int, ...] = (),
                 numel: int = 48, params: P.ProtocolParams | None = None, attack_start: int = 0,
                 attack_every: int = 1, seed: int = 0, shuffle: bool = False, site_closes: bool = False,
                 **attack_params):
        self.numel = numel
        self.identities = [Identity.from_seed(f"test:{seed}:{i}".encode()) for i in range(n)]
        self.ids = [i.peer_id for i in self.identities]
        self.keys = {i.peer_id: i.public_key_b64 for i in self.identities}
        self.byzantine = {self.ids[i] for i in byzantine}
        self.collusion = Collusion(members=set(self.byzantine), seed=seed)
        self.params = params or P.ProtocolParams(tau=1.0, validators=1)
        built = build_swarm(self.identities, self.params, self._gradients, run=RUN, byzantine=self.byzantine,
                            attack=attack, collusion=self.collusion, entropy=seeded_bytes(seed),
                            nonce=seeded_nonces(seed),
                            attack_params=dict(attack_start=attack_start, attack_every=attack_every,
                                               **attack_params),
                            before_gradients=self._collude,
                            shuffle=random.Random(seed + 99) if shuffle else None, site_closes=site_closes)
        self.verifier, self.peers, self.board, self.memory = built.verifier, built.peers, built.board, built.memory
        self.r = genesis_randomness(RUN, seed)
        self.version = 0
        self.records: dict[str, P.StepRecord | None] = {p: None for p in self.ids}
        self.step_no = 0
        self.history: list[dict[str, P.StepResult]] = []
        self.computed = 0

    @property
    def honest(self) -> list[str]:
        return [p for p in self.ids if p not in self.byzantine]

    def _gradients(self, requests):
        self.computed += len(requests)
        return [synthetic_gradient(req.model_ref, req.seed, self.numel, req.flip_labels) for _, req in requests]

    def _collude(self, step, own):
        self.collusion.step, self.collusion.honest = step, own

    def contexts(self) -> dict[str, P.StepContext]:
        group = self.board.next_group()
        return {p: P.StepContext(run=RUN, step=self.step_no, group=group, public_keys=self.keys, r_prev=self.r,
                                 numel=self.numel, model_ref=self.version, prev=self.records[p])
                for p in group}

    def step(self) -> dict[str, P.StepResult]:
        results = self.memory.run_step(self.contexts())
        self.board.report_silence({p: r.silent for p, r in results.items() if p not in self.byzantine})
        honest = [results[p] for p in results if p not in self.byzantine]
        ref = honest[0]
        for p, r in results.items():
            self.records[p] = r.record
        self.r = ref.r
        if ref.outcome == "applied":
            self.version += 1
        self.step_no += 1
        self.history.append(results)
        return results

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()
