"""Browser sessions of the console (``/ui``): a signed cookie, never the API key itself.

Signing in posts an API key once; the server checks it and sets the cookie ``cdp_session`` to a payload
signed with itsdangerous (HMAC-SHA1 over a key derived from ``CDP_SESSION_SECRET``, timestamped):
``{"d": sha256 of the key, "c": a random CSRF token}``. The digest is what the keys file already stores; it
is not a credential for the API (a bearer key must hash to it), and every request looks it up in the
key ring again, so revoking a key ends its sessions at once. The cookie is ``HttpOnly``,
``SameSite=Strict``, ``Secure`` when the request came over TLS, and expires after ``MAX_AGE_S``.

The cookie authenticates safe requests only (GET, HEAD): the console's pages, the event stream its page
reads with ``EventSource`` and the artifacts its images and links load. A state-changing console form (cancel,
sign out) carries the session's CSRF token in a hidden field, checked by :meth:`Sessions.check_csrf`; the
JSON API's POST routes still need ``Authorization: Bearer``.

Without ``CDP_SESSION_SECRET`` a random secret is drawn when the app starts: sessions then end with the
process and are not shared between API processes (set the secret when running more than one).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from http.cookies import SimpleCookie

from itsdangerous import BadSignature, URLSafeTimedSerializer

from core.jobs.apikeys import KeyEntry, KeyRing, digest

ANONYMOUS = "anonymous"  # the local team of a server without keys (api.auth.ANONYMOUS)
COOKIE = "cdp_session"
MAX_AGE_S = 12 * 3600
_SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Session:
    team: str
    role: str
    csrf: str


class Sessions:
    def __init__(self, keys: KeyRing, secret: str | None) -> None:
        self.keys = keys
        self._signer = URLSafeTimedSerializer(secret or secrets.token_urlsafe(32), salt="cdp-console-session")

    @property
    def enabled(self) -> bool:
        """Whether the server has keys (without them every caller is the local team and needs no session)."""
        return self.keys.enabled

    def sign_in(self, key: str) -> tuple[str, KeyEntry] | None:
        """The cookie value for a valid API key and its entry, or None for an unknown key."""
        entry = self.keys.lookup(key.strip())
        if entry is None:
            return None
        return self._signer.dumps({"d": digest(key.strip()), "c": secrets.token_urlsafe(24)}), entry

    def anonymous(self) -> str:
        """A cookie value for the local team of a server without keys (it carries only a CSRF token)."""
        return self._signer.dumps({"d": "", "c": secrets.token_urlsafe(24)})

    def load(self, cookie_value: str | None) -> Session | None:
        """The session of a cookie value: None when missing, forged, expired or of a revoked key."""
        if not cookie_value:
            return None
        try:
            data = self._signer.loads(cookie_value, max_age=MAX_AGE_S)
        except BadSignature:
            return None
        if not (isinstance(data, dict) and isinstance(data.get("d"), str) and isinstance(data.get("c"), str)):
            return None
        if not self.keys.enabled:
            return Session(ANONYMOUS, "member", data["c"])
        entry = self.keys.lookup_digest(data["d"]) if data["d"] else None
        return None if entry is None else Session(entry.team, entry.role, data["c"])

    def from_scope(self, scope: dict) -> Session | None:
        """The session of an ASGI request's cookie header, for safe methods only (GET, HEAD)."""
        if scope.get("method") not in _SAFE_METHODS:
            return None
        return self.load(cookie_of(scope))

    @staticmethod
    def check_csrf(session: Session | None, token: str | None) -> bool:
        return session is not None and bool(token) and hmac.compare_digest(session.csrf, str(token))


def cookie_of(scope: dict) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is no session
                return None
            if COOKIE in jar:
                return jar[COOKIE].value
    return None
