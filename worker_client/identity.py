"""Where the worker keeps its identity key: the user's config directory, one key per site, mode 0600.

The key is reused across restarts so the worker keeps its peer id. Losing it is not losing the
account: reputation belongs to the volunteer account behind the token, and a new key only means
a new probation.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from urllib.parse import urlsplit

from btard_wire.envelope import Identity
from btard_wire.errors import ProtocolError

APP_DIR = "btard-swarm"


def config_dir(override: str | os.PathLike | None = None) -> Path:
    """``--config-dir``, else ``$BTARD_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/btard-swarm`` (``~/.config``)."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("BTARD_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / APP_DIR


def server_slug(server: str) -> str:
    """A file-name-safe name for the site: host and port (``127.0.0.1_8000``)."""
    parts = urlsplit(server if "://" in server else f"http://{server}")
    host = parts.hostname or "localhost"
    slug = host + (f"_{parts.port}" if parts.port else "")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", slug)


def identity_path(server: str, override_dir: str | os.PathLike | None = None) -> Path:
    return config_dir(override_dir) / f"identity-{server_slug(server)}.key"


class IdentityFileError(RuntimeError):
    """The key file exists but cannot be used; the message says what to do."""


def save_identity(identity: Identity, path: Path) -> None:
    """Write the raw private key with 0600 permissions (created that way, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(identity.private_bytes())
    os.chmod(path, 0o600)


def load_or_create_identity(path: Path) -> Identity:
    """The identity stored at ``path``, or a new one saved there. Raises :class:`ProtocolError` when the
    file is not a 32-byte Ed25519 private key."""
    if path.exists():
        return Identity.from_private_bytes(path.read_bytes(), what=str(path))
    identity = Identity.generate()
    save_identity(identity, path)
    return identity


def load_identity(server: str, override_dir: str | os.PathLike | None = None) -> tuple[Identity, Path, bool]:
    """Load this site's identity key or create it (0600). Returns ``(identity, path, created)``.

    Raises :class:`IdentityFileError` when the file is unreadable, corrupt or readable by others.
    """
    path = identity_path(server, override_dir)
    created = not path.exists()
    if not created:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise IdentityFileError(
                f"{path} is readable by other users (mode {mode:o}): run `chmod 600 {path}` and start again")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = load_or_create_identity(path)
    except ProtocolError as exc:
        raise IdentityFileError(f"{exc}. Move it away to start with a new key (you will go through "
                                f"probation again; your account and reputation are kept)") from None
    except OSError as exc:
        raise IdentityFileError(f"cannot use the identity key at {path}: {exc}") from None
    return identity, path, created


def retire_identity(server: str, override_dir: str | os.PathLike | None = None) -> Path | None:
    """Move this site's key aside (``identity-<site>.key.retired-<n>``, kept for the record) so the next
    start creates a new one. Returns where it went, or ``None`` when there was no key."""
    path = identity_path(server, override_dir)
    if not path.exists():
        return None
    n = 1
    while (target := path.with_name(f"{path.name}.retired-{n}")).exists():
        n += 1
    path.rename(target)
    return target
