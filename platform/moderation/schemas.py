"""Payloads of the broadcasts the site acts on (the protocol core owns the other phases' schemas)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PEER_ID = r"^[0-9a-f]{40}$"


class VerdictPayload(BaseModel):
    """A peer's signed verdict: ``guilty`` is banned once a strict majority of the step's group signs
    a verdict naming it (paper sec. 3, ACCUSE)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["verdict"]
    guilty: str = Field(pattern=PEER_ID)
    accuser: str | None = Field(default=None, pattern=PEER_ID)
    accused: str = Field(pattern=PEER_ID)
    kind: str = Field(min_length=1, max_length=64)
    evidence: list[str] = Field(default_factory=list, max_length=64)
    reason: str = Field(default="", max_length=500)


class EliminatePayload(BaseModel):
    """ELIMINATE(sender, target): an unprovable fault; both sit out the epoch and staff review it."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["eliminate"]
    target: str = Field(pattern=PEER_ID)
    reason: str = Field(default="", max_length=500)
