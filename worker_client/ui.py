"""What the volunteer sees: a live rich panel, JSON lines for services, or nothing (``--quiet``).

The worker owns one :class:`WorkerStatus` and calls ``view.update(status)`` / ``view.event(...)``;
views never change the status. Text from the site or from peers (run names, ban reasons, error
messages) is never parsed as rich markup: it goes into :class:`rich.text.Text` as it is, so
``[/dim]`` cannot crash the view and ``[link=...]`` cannot plant a terminal hyperlink.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text


@dataclass
class WorkerStatus:
    server: str = ""
    peer_id: str = ""
    run: str = ""
    task: str = ""
    device: str = "cpu"
    connection: str = "starting"
    role: str = ""  # candidate / active
    status: str = "waiting_for_group"  # the heartbeat's status reason
    detail: str = ""
    step: int | None = None
    loss: float | None = None
    accuracy: float | None = None
    group_size: int = 0
    step_roles: list[str] = field(default_factory=list)  # "aggregator of part 2", "validator of 1a2b3c4d"
    bytes_sent: int = 0
    bytes_received: int = 0
    steps_applied: int = 0
    steps_dropped: int = 0
    steps_reverted: int = 0  # applied, then undone by the next step's recalculation ban
    bans_seen: list[str] = field(default_factory=list)
    last_error: str = ""


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def render(status: WorkerStatus):
    """A rich renderable of the status (a two-column table in a panel)."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", justify="right")
    table.add_column()

    def row(label: str, *parts: tuple[str, str] | str) -> None:
        cell = Text()
        for part in parts:
            text, style = (part, "") if isinstance(part, str) else part
            cell.append(text, style=style)
        table.add_row(label, cell)

    row("site", f"{status.server}  [{status.connection}]")
    row("peer", f"{status.peer_id[:12]}  {status.role or '-'}  on {status.device}")
    row("run", f"{status.run or '-'}  task {status.task or '-'}")
    row("step", "-" if status.step is None else str(status.step))
    row("loss", "-" if status.loss is None else f"{status.loss:.4f}"
        + ("" if status.accuracy is None else f"   accuracy {status.accuracy:.3f}"))
    row("group", f"{status.group_size} peers")
    row("role this step", ", ".join(status.step_roles) or "contributor")
    row("traffic", f"sent {human_bytes(status.bytes_sent)}, received {human_bytes(status.bytes_received)}")
    row("steps", f"{status.steps_applied} applied, {status.steps_dropped} dropped"
                 + (f", {status.steps_reverted} undone" if status.steps_reverted else ""))
    row("bans seen", ", ".join(b[:8] for b in status.bans_seen[-6:]) or "none")
    row("status", (status.status, "red" if status.status == "error" else "green"), f" {status.detail}")
    if status.last_error:
        row("last error", (status.last_error, "red"))
    return Panel(table, title="btard-worker", border_style="blue")


class LiveView:
    """A live-updating terminal panel (rich). Use as a context manager."""

    def __init__(self, console=None, refresh_per_second: float = 4):
        self.console = console or Console(stderr=True)
        self._live = Live(console=self.console, refresh_per_second=refresh_per_second, transient=False)

    def __enter__(self):
        self._live.__enter__()
        return self

    def __exit__(self, *exc):
        self._live.__exit__(*exc)

    def update(self, status: WorkerStatus) -> None:
        self._live.update(render(status))

    def event(self, kind: str, message: str, **fields: Any) -> None:
        style = {"error": "red", "ban": "bold red", "fatal": "bold red", "warning": "yellow", "late": "yellow", "refused": "yellow",
                 "connection": "yellow", "announcement": "bold cyan", "run": "bold yellow"}.get(kind, "dim")
        self._live.console.print(Text(f"{time.strftime('%H:%M:%S')} {kind}: {message}", style=style))


class JsonView:
    """One JSON object per line: ``{"ts", "event", "message", ...}`` on events, status on each step."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self._last_step: int | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.flush()

    def _emit(self, obj: dict) -> None:
        self.stream.write(json.dumps(obj, default=str) + "\n")
        self.stream.flush()

    def update(self, status: WorkerStatus) -> None:
        if status.step != self._last_step:
            self._last_step = status.step
            self._emit({"ts": time.time(), "event": "status", **asdict(status)})

    def event(self, kind: str, message: str, **fields: Any) -> None:
        self._emit({"ts": time.time(), "event": kind, "message": message, **fields})


class QuietView(JsonView):
    """``--quiet``: only errors, bans and the final outcome, as JSON lines on stderr."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__(stream or sys.stderr)

    def update(self, status: WorkerStatus) -> None:
        pass

    def event(self, kind: str, message: str, **fields: Any) -> None:
        if kind in {"error", "fatal", "ban", "exit", "connection"}:  # connection: the site cannot be reached
            super().event(kind, message, **fields)


def make_view(*, json_logs: bool, quiet: bool):
    if quiet:
        return QuietView()
    if json_logs or not sys.stderr.isatty():
        return JsonView()
    return LiveView()
