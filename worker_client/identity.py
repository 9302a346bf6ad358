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


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def save_identity(identity: Identity, path: Path) -> None:
    """Write the raw private key to a new file created 0600. The file must not exist: ``O_EXCL`` with
    ``O_NOFOLLOW`` never writes through a symlink someone planted at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(identity.private_bytes())


def _read_key(path: Path) -> bytes:
    """The key file's bytes, refusing a symlink and a file others can read (checked on the open file)."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise IdentityFileError(f"{path} is not a regular file: move it away and start again")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise IdentityFileError(
                f"{path} is readable by other users (mode {mode:o}): run `chmod 600 {path}` and start again")
        return fh.read(64)


def load_or_create_identity(path: Path) -> Identity:
    """The identity stored at ``path``, or a new one saved there. Raises :class:`ProtocolError` when the
    file is not a 32-byte Ed25519 private key, :class:`IdentityFileError` when it is a symlink or
    readable by others."""
    if path.is_symlink():
        raise IdentityFileError(f"{path} is a symbolic link; the worker does not follow links for its key: "
                                f"move it away and start again")
    if path.exists():
        return Identity.from_private_bytes(_read_key(path), what=str(path))
    identity = Identity.generate()
    save_identity(identity, path)
    return identity


def _check_directory(directory: Path) -> None:
    """Refuse a key directory other users can write to: they could swap the key or plant a link."""
    try:
        info = directory.stat()
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise IdentityFileError(f"{directory} is writable by other users (mode {mode:o}): run "
                                f"`chmod 700 {directory}` or choose another --config-dir")


def load_identity(server: str, override_dir: str | os.PathLike | None = None) -> tuple[Identity, Path, bool]:
    """Load this site's identity key or create it (0600). Returns ``(identity, path, created)``.

    Raises :class:`IdentityFileError` when the file is unreadable, corrupt or readable by others.
    """
    path = identity_path(server, override_dir)
    _check_directory(path.parent)
    created = not path.exists() and not path.is_symlink()
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
