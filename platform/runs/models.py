"""Runs, their peers, the steps the site drove, and the broadcast bulletin board."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Run(models.Model):
    STATES = [("open", "open"), ("paused", "paused"), ("finished", "finished")]

    name = models.CharField(max_length=100, unique=True)
    task = models.CharField(max_length=64, default="digits-mlp")
    state = models.CharField(max_length=16, choices=STATES, default="open")
    # hyper-parameters sent to workers (RunInfo)
    aggregator = models.CharField(max_length=32, default="btard")
    tau = models.FloatField(default=1.0)
    peers_per_group = models.PositiveIntegerField(default=16)
    validators_per_step = models.PositiveIntegerField(default=2)  # m >= 2, as the protocol core's default
    probation_steps = models.PositiveIntegerField(default=5)
    batch_size = models.PositiveIntegerField(default=32)
    lr = models.FloatField(default=0.05)
    seed = models.IntegerField(default=0)
    phase_timeout = models.FloatField(default=30.0, help_text="seconds per protocol phase")
    step_timeout = models.FloatField(default=120.0, help_text="seconds before a step is closed without reports")
    min_peers = models.PositiveIntegerField(default=2, help_text="online active peers needed to start a step")
    epoch_steps = models.PositiveIntegerField(default=50, help_text="an ELIMINATE pair sits out until the epoch ends")
    checkpoint_every = models.PositiveIntegerField(
        default=50, help_text="keep a checkpoint of the model after every such step (0: none)")
    extra = models.JSONField(default=dict, blank=True)
    # admission
    admission_policy = models.CharField(max_length=32, default="reputation")
    max_new_per_window = models.PositiveIntegerField(default=4)
    admission_window_seconds = models.PositiveIntegerField(default=600)
    max_candidate_fraction = models.FloatField(default=0.25)
    missed_deadlines_for_case = models.PositiveIntegerField(default=3)
    broadcast_retention_hours = models.PositiveIntegerField(default=72)
    # state
    current_step = models.IntegerField(default=0)
    step_in_progress = models.BooleanField(default=False)
    step_started_at = models.DateTimeField(null=True, blank=True)
    step_deadline = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    def run_info(self):
        from btard_wire.control import RunInfo

        return RunInfo(id=self.id, name=self.name, task=self.task, aggregator=self.aggregator, tau=self.tau,
                       peers_per_group=self.peers_per_group, validators_per_step=self.validators_per_step,
                       probation_steps=self.probation_steps, batch_size=self.batch_size, lr=self.lr,
                       seed=self.seed, phase_timeout=self.phase_timeout, checkpoint_every=self.checkpoint_every,
                       extra=self.extra or {})

    @property
    def epoch(self) -> int:
        return self.current_step // max(1, self.epoch_steps)


class Peer(models.Model):
    """One worker key in one run. A new key of the same account is a new peer (probation again)."""

    ROLES = [("waiting", "waiting for admission"), ("candidate", "candidate (probation)"), ("active", "active"),
             ("banned", "banned")]
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="peers")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="peers")
    token = models.ForeignKey("volunteers.WorkerToken", null=True, blank=True, on_delete=models.SET_NULL)
    peer_id = models.CharField(max_length=40)
    public_key = models.CharField(max_length=64)
    p2p_id = models.CharField(max_length=128, blank=True)
    p2p_addrs = models.JSONField(default=list, blank=True)
    device = models.CharField(max_length=64, blank=True)
    client_version = models.CharField(max_length=32, blank=True)
    role = models.CharField(max_length=16, choices=ROLES, default="waiting")
    online = models.BooleanField(default=False)
    status = models.CharField(max_length=32, default="waiting_for_group")
    status_detail = models.CharField(max_length=500, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # when the worker last went offline (socket closed, heartbeats stopped); None while it is connected
    left_at = models.DateTimeField(null=True, blank=True)
    # can other peers dial this peer's announced address? (another active peer tried; None: not checked)
    reachable = models.BooleanField(null=True, blank=True)
    reachability_detail = models.CharField(max_length=500, blank=True)
    reachability_checked_at = models.DateTimeField(null=True, blank=True)
    joined_at = models.DateTimeField(auto_now_add=True)
    admitted_at = models.DateTimeField(null=True, blank=True)
    promoted_at = models.DateTimeField(null=True, blank=True)
    probation_required = models.PositiveIntegerField(default=0)
    probation_done = models.PositiveIntegerField(default=0)
    excluded_until_step = models.IntegerField(null=True, blank=True, help_text="ELIMINATE: out of groups until")
    missed_deadlines = models.PositiveIntegerField(default=0, help_text="consecutive missed step reports")
    silent_steps = models.PositiveIntegerField(default=0, help_text="steps a majority of the group reported it silent")
    # the step in progress when the key last (re)joined, and its last step whose silence was excused
    # (btard_wire.board.silence_excused: a restarted worker catching up)
    rejoined_step = models.IntegerField(null=True, blank=True)
    silence_excused_step = models.IntegerField(null=True, blank=True)
    # steps of the last REVEAL_WINDOW in which it withheld its MPRNG reveal (btard_wire.board.next_withheld_steps)
    withheld_reveal_steps = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["peer_id"]
        constraints = [models.UniqueConstraint(fields=["run", "peer_id"], name="one_peer_per_key_per_run")]
        indexes = [models.Index(fields=["run", "role", "online"])]

    def __str__(self) -> str:
        return f"{self.peer_id[:8]} ({self.user.username if self.user_id else '?'})"

    def peer_info(self):
        from btard_wire.control import PeerInfo

        return PeerInfo(peer_id=self.peer_id, public_key=self.public_key, p2p_id=self.p2p_id,
                        p2p_addrs=list(self.p2p_addrs or []))


class StepRecord(models.Model):
    """A step the site formed: its group, validators, candidates, and the outcome once closed."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    step = models.IntegerField()
    members = models.JSONField(default=list)
    validators = models.JSONField(default=dict)
    candidates = models.JSONField(default=list)
    started_at = models.DateTimeField(auto_now_add=True)
    deadline = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, blank=True)
    loss = models.FloatField(null=True, blank=True)
    accuracy = models.FloatField(null=True, blank=True)
    samples = models.IntegerField(default=0)
    # board phases closed by the site: phase -> peers that asked (until a majority), and phase -> senders
    close_requests = models.JSONField(default=dict, blank=True)
    closed_phases = models.JSONField(default=dict, blank=True)
    # members that left the step: they were offline longer than the grace and joined again (a restarted worker
    # holds none of the step's state), so the step does not wait for their report
    left = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["run", "step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="one_record_per_step")]

    def recipients(self) -> list[str]:
        return list(self.members) + [c["peer_id"] for c in self.candidates]


class StepReportRecord(models.Model):
    step_record = models.ForeignKey(StepRecord, on_delete=models.CASCADE, related_name="reports")
    peer = models.ForeignKey(Peer, on_delete=models.CASCADE, related_name="reports")
    outcome = models.CharField(max_length=16)
    loss = models.FloatField(null=True, blank=True)
    accuracy = models.FloatField(null=True, blank=True)
    samples = models.IntegerField(default=0)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["step_record", "peer"], name="one_report_per_peer")]


class BroadcastLog(models.Model):
    """A signed broadcast the site verified, stored as evidence and relayed unchanged."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="broadcasts")
    step = models.IntegerField()
    phase = models.CharField(max_length=32)
    sender = models.ForeignKey(Peer, on_delete=models.CASCADE, related_name="broadcasts")
    sender_peer_id = models.CharField(max_length=40)
    nonce = models.CharField(max_length=32)
    digest = models.CharField(max_length=64)
    envelope = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["run", "sender_peer_id", "nonce"], name="no_replayed_nonce")]
        indexes = [models.Index(fields=["run", "step", "phase"]), models.Index(fields=["created_at"])]


class Checkpoint(models.Model):
    """The model state after a step, as safetensors bytes on disk (``CHECKPOINT_DIR``). Stored only when a
    strict majority of the step's group reported the same state hash (``runs.checkpoints``)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.IntegerField()
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    path = models.CharField(max_length=500)
    uploaded_by = models.ForeignKey(Peer, null=True, on_delete=models.SET_NULL, related_name="+")
    confirmations = models.PositiveIntegerField(default=0)
    group_size = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="one_checkpoint_per_step")]

    def __str__(self) -> str:
        return f"checkpoint {self.run.name} step {self.step}"
