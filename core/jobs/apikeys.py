"""API keys: a JSON file of hashed keys, each with its team and role (written by ``cdp keys create``).

A key is ``cdp_<id>_<secret>``: an 8-hex-digit id (to name it in listings and revoke it) and 32 random bytes
from :mod:`secrets` (256 bits). The file keeps only ``sha256(key)``. A slow password hash (bcrypt, argon2)
exists to make guessing *low-entropy* passwords expensive; a 256-bit random key cannot be guessed however
fast the hash, so one sha256 is enough, and it lets the API find the key by its digest in one dictionary
look-up per request instead of running a deliberately slow function on every call.

File layout (``CDP_API_KEYS_FILE``)::

    {"version": 1, "keys": [{"id": "3f2a9c1e", "team": "team-a", "role": "member",
                             "sha256": "<hex>", "created_at": "2026-01-01T00:00:00+00:00"}]}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

Role = Literal["member", "admin"]
ROLES: tuple[str, ...] = ("member", "admin")
TEAM_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEY_PATTERN = re.compile(r"cdp_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class KeyEntry:
    id: str
    team: str
    role: Role
    sha256: str
    created_at: str


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, key): the key is shown once; only its digest is stored."""
    key_id = secrets.token_hex(4)
    return key_id, f"cdp_{key_id}_{secrets.token_urlsafe(32)}"


def read_entries(path: Path) -> list[KeyEntry]:
    """The entries of a keys file; [] when the file does not exist."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError(f"{path.name}: not a keys file (expected {{\"version\": 1, \"keys\": [...]}})")
    entries = []
    for raw in data["keys"]:
        if raw.get("role") not in ROLES or not TEAM_PATTERN.fullmatch(str(raw.get("team", ""))):
            raise ValueError(f"{path.name}: key {raw.get('id')!r} has a bad team or role")
        entries.append(KeyEntry(id=str(raw["id"]), team=raw["team"], role=raw["role"],
                                sha256=str(raw["sha256"]), created_at=str(raw.get("created_at", ""))))
    return entries


def write_entries(path: Path, entries: list[KeyEntry]) -> None:
    """Replace the file atomically (a reader sees the old or the new file), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"version": 1, "keys": [entry.__dict__ for entry in entries]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(body, out, indent=1)
            out.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_key(path: Path, *, team: str, role: Role = "member") -> tuple[KeyEntry, str]:
    """Add a new key for ``team`` to the file; returns its entry and the key (which the file never holds)."""
    if not TEAM_PATTERN.fullmatch(team):
        raise ValueError(f"team must be 1-64 letters, digits, '.', '_', '-' (got {team[:40]!r})")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    entries = read_entries(path)
    key_id, key = new_key()
    entry = KeyEntry(id=key_id, team=team, role=role, sha256=digest(key),
                     created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    write_entries(path, [*entries, entry])
    return entry, key


def revoke_key(path: Path, key_id: str) -> bool:
    entries = read_entries(path)
    kept = [entry for entry in entries if entry.id != key_id]
    if len(kept) == len(entries):
        return False
    write_entries(path, kept)
    return True


class KeyRing:
    """The keys of a file, re-read when its modification time or size changes (a new key works at once)."""

    def __init__(self, path: Path | None, legacy_tokens: dict[str, str] | None = None) -> None:
        self.path = path
        self._legacy = {
            digest(token): KeyEntry(id="legacy", team=team, role="member", sha256=digest(token),
                                    created_at="")
            for token, team in (legacy_tokens or {}).items()}
        self._by_digest: dict[str, KeyEntry] = {}
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.path is not None or bool(self._legacy)

    def lookup(self, key: str) -> KeyEntry | None:
        """The entry of a presented key, or None. Keys of the wrong shape are refused without hashing."""
        if not key or len(key) > 200:
            return None
        found = self._legacy.get(digest(key))
        if found is not None or self.path is None or not _KEY_PATTERN.fullmatch(key):
            return found
        return self._entries().get(digest(key))

    def lookup_digest(self, key_digest: str) -> KeyEntry | None:
        """The entry whose key hashes to ``key_digest`` (a console session holds the digest, not the key)."""
        found = self._legacy.get(key_digest)
        if found is not None or self.path is None:
            return found
        return self._entries().get(key_digest)

    def _entries(self) -> dict[str, KeyEntry]:
        assert self.path is not None
        try:
            stat = self.path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                entries = read_entries(self.path) if stamp is not None else []
                self._by_digest = {entry.sha256: entry for entry in entries}
                self._stamp = stamp
            return self._by_digest
