"""What every simulated run sets up before its loop: the task and model, the peers' identities and
attackers, the collusion, the in-memory swarm; and the one result type every loop returns."""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from btard_wire.envelope import Identity

from ..btard import protocol as P
from ..btard.attacks import Collusion
from ..tasks import get_task, param_slices
from ..transports.memory import Swarm, build_swarm, seeded_bytes, seeded_nonces
from .models import Models, dirichlet_shards

RUN = "sim"


@dataclass
class Outcome:
    """What one loop returns (BTARD, a trusted-server baseline, Kardam): the accuracy curve, the bans and
    the loop's own figures (``stats``, merged into the run summary; docs/protocol.md, "btard-sim")."""

    curve: list[list[float]] = field(default_factory=list)
    bans: list[dict] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class World:
    """The run's shared set-up; ``founders`` start active, ``joiners`` join later as candidates."""

    task: Any
    model: torch.nn.Module
    optimizer: Any
    models: Models
    identities: list[Identity]
    ids: list[str]
    founders: list[str]
    joiners: list[str]
    byz_ids: set[str]
    keys: dict[str, str]
    collusion: Collusion
    params: P.ProtocolParams
    base_batch: int
    swarm: Swarm
    numel: int
    seed: int
    steps: int
    eval_every: int
    outcome: Outcome = field(default_factory=Outcome)
    bar: Any = None

    @property
    def peers(self) -> dict[str, P.BtardPeer]:
        return self.swarm.peers

    def evaluate(self, step: int) -> None:
        self.outcome.curve.append([step, self.task.evaluate(self.model)])

    def tick(self, step: int, **postfix) -> None:
        """Step ``step`` is done: evaluate when due, move the progress bar."""
        if self.eval_every and (step + 1) % self.eval_every == 0:
            self.evaluate(step + 1)
        if self.bar:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(**postfix)

    def pad_diverged(self) -> None:
        """A diverged model stays diverged: record its (chance-level) accuracy at the remaining points."""
        if "diverged_at" in self.outcome.stats and self.eval_every:
            acc = self.task.evaluate(self.model)
            curve = self.outcome.curve
            last = curve[-1][0] if curve else 0
            curve.extend([s, acc] for s in range(last + self.eval_every, self.steps + 1, self.eval_every))


def build_world(*, task: str, peers: int, byzantine: int, attack: str, attack_start: int, attack_every: int,
                attack_params: dict, joiners: int, byzantine_joiners: int, seed: int, tau: float, validators: int,
                batch_size: int, global_batch: int, lr: float | None, staleness: int, non_iid: float,
                protocol_params: dict, board_echo: bool, site_closes: bool, steps: int, eval_every: int,
                progress: bool, label: str) -> World:
    """Build the run's world from :func:`~.run.run_simulation`'s (already checked) arguments."""
    torch.manual_seed(seed)
    t_task = get_task(task)
    model = t_task.build_model(seed)
    optimizer = t_task.make_optimizer(model.parameters())
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    rng = random.Random(seed)
    identities = [Identity.from_seed(f"btard-sim:{seed}:{i}".encode()) for i in range(peers + joiners)]
    ids = [i.peer_id for i in identities]
    founders, late = ids[:peers], ids[peers:]
    shards = dirichlet_shards(t_task.data[1], ids, alpha=non_iid, seed=seed) if non_iid else None
    models = Models(t_task, model, batch_size, keep=max(3, staleness + 2), shards=shards)
    numel = models.states[0].numel()

    # the founders' attackers are drawn as before joiners existed (same seed, same attackers); the
    # joiners' attackers after them
    byz_ids = set(rng.sample(founders, byzantine)) | set(rng.sample(late, byzantine_joiners))
    keys = {i.peer_id: i.public_key_b64 for i in identities}
    collusion = Collusion(members=set(byz_ids), seed=seed, segments=param_slices(model))
    params = P.ProtocolParams(tau=tau, validators=validators, global_batch=global_batch,
                              **{"board_echo": board_echo, **protocol_params})
    # without bans every step has all peers: the baselines use the same per-peer batch BTARD starts with
    base_batch = params.global_batch and math.ceil(params.global_batch / peers)

    def before(step: int, own: dict[str, torch.Tensor]) -> None:
        collusion.step, collusion.honest = step, own

    # the peers, the board and the in-memory transport (the baselines use only the peers' hooks);
    # seeded MPRNG secrets and envelope nonces, so one seed gives the same run byte for byte
    swarm = build_swarm(identities, params, models.batch, run=RUN, byzantine=byz_ids, attack=attack,
                        collusion=collusion, entropy=seeded_bytes(seed * 7919 + 1), nonce=seeded_nonces(seed),
                        attack_params=dict(attack_start=attack_start, attack_every=attack_every, **attack_params),
                        members=founders, before_gradients=before, site_closes=site_closes)
    bar = None
    if progress:
        from tqdm import tqdm  # only for an interactive run

        bar = tqdm(total=steps, file=sys.stderr, desc=label, leave=False)
    return World(task=t_task, model=model, optimizer=optimizer, models=models, identities=identities, ids=ids,
                 founders=founders, joiners=late, byz_ids=byz_ids, keys=keys, collusion=collusion, params=params,
                 base_batch=base_batch, swarm=swarm, numel=numel, seed=seed, steps=steps, eval_every=eval_every,
                 bar=bar)
