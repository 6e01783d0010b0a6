"""Bearer API keys with scopes: who may call which route of the serving API.

A client sends `Authorization: Bearer <key>` (a WebSocket client may send `?token=<key>` instead, since
browsers cannot set headers on a WebSocket). Keys are random strings of at least 32 characters
(`python -m serving.auth new NAME SCOPE...` makes one); the server keeps only their sha256 digests and
checks a request with one sha256 (~1 µs for a 43-character key) and one dict lookup, then
`hmac.compare_digest` of the digests. No slow KDF (bcrypt, scrypt, argon2): those protect guessable
passwords, and a 256-bit random key cannot be guessed, so hashing it once is enough; a KDF would cost
milliseconds per request. The lookup's timing depends only on the digest of what the client sent, which
says nothing about a stored key without inverting sha256.

| scope     | grants                                                                       |
|-----------|------------------------------------------------------------------------------|
| `predict` | `POST /v1/predict` (stateless: a window in, a prediction out)               |
| `stream`  | `POST /v1/candles(/batch)`, `WS /v1/stream`, `DELETE /v1/streams/{symbol}` (stream state) |
| `alerts`  | `WS /v1/alerts`                                                              |
| `admin`   | every scope above (and any administrative route added later)                |
| any key   | `GET /v1/models`, `/docs`, `/openapi.json`; `/healthz`, `/readyz`, `/metrics` when not in `api.auth.open_paths` |

Keys come from the environment variable `api.auth.keys_env` (default `KAIROS_API_KEYS`: entries
`name:key:scope,scope` separated by `;` or whitespace) and/or the YAML file `api.auth.keys_file`
(`keys: [{name, sha256, scopes}]`: digests only, no key on disk). No key configured = auth off (one
warning at start-up); `api.auth.required: true` refuses to start then. A missing or unknown key gets
401 + `WWW-Authenticate: Bearer`; a known key without the route's scope 403 naming the scope; a refused
WebSocket is accepted, sent `{"type": "error", "status", "error"}` and closed with code 1008. Keys are
never logged nor echoed: messages name the key's `name` only, and `?token=` is removed from a
WebSocket's query string before anything (uvicorn's connection log, the handlers) sees it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.contracts.errors import ConfigError
from pipelines.contracts.yamlio import parse_config, read_yaml
from serving.config import AuthConfig

log = logging.getLogger("kairos.serving.auth")

Scope = Literal["predict", "stream", "alerts", "admin"]
SCOPES: tuple[str, ...] = ("predict", "stream", "alerts", "admin")
MIN_KEY_CHARS = 32  # `secrets.token_urlsafe(32)` gives 43 characters (256 bits)
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without space

# The scope each route needs, by ASGI scope type and path (a path ending in "/" is a prefix).
# Every other path (GET /v1/models, /docs, unknown paths, probes not in open_paths) needs a valid key
# of any scope. tests/unit/test_serving_auth.py checks that every route of the app is listed or meant
# to take any key, so a new route cannot slip through unscoped.
ROUTE_SCOPES: dict[tuple[str, str], str] = {
    ("http", "/v1/predict"): "predict",
    ("http", "/v1/candles"): "stream",
    ("http", "/v1/candles/batch"): "stream",
    ("http", "/v1/streams/"): "stream",
    ("websocket", "/v1/stream"): "stream",
    ("websocket", "/v1/alerts"): "alerts",
}
_PREFIXES = tuple((kind, path, s) for (kind, path), s in ROUTE_SCOPES.items() if path.endswith("/"))


def required_scope(kind: str, path: str) -> str | None:
    """The scope a key needs for `path` (`kind` = "http" | "websocket"); None = any valid key."""
    need = ROUTE_SCOPES.get((kind, path))
    if need is None:
        for k, prefix, s in _PREFIXES:
            if k == kind and path.startswith(prefix):
                return s
    return need


def digest(key: str) -> bytes:
    """sha256 of a key (UTF-8): what is stored and compared."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, repr=False)
class ApiKey:
    name: str  # shown in logs and 403 messages instead of the key
    digest: bytes  # sha256 of the key (32 bytes)
    scopes: frozenset[str] = frozenset()

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def __repr__(self) -> str:  # no digest in reprs either
        return f"ApiKey(name={self.name!r}, scopes={sorted(self.scopes)})"


class KeyRing:
    """The configured keys by digest; empty = auth off."""

    def __init__(self, keys: Iterable[ApiKey] = ()):
        self._by_digest: dict[bytes, ApiKey] = {}
        for k in keys:
            if k.digest in self._by_digest:
                raise ConfigError(
                    f"API keys {self._by_digest[k.digest].name!r} and {k.name!r} are the same key; "
                    "give each client its own"
                )
            self._by_digest[k.digest] = k

    def __len__(self) -> int:
        return len(self._by_digest)

    @property
    def names(self) -> list[str]:
        return sorted(k.name for k in self._by_digest.values())

    def lookup(self, key: str) -> ApiKey | None:
        """The key's entry, None when unknown: one sha256, one dict lookup, one constant-time compare."""
        d = digest(key)
        found = self._by_digest.get(d)
        if found is None or not hmac.compare_digest(found.digest, d):
            return None
        return found


class _FileKey(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=_NAME.pattern)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="hex sha256 of the key")]
    scopes: tuple[Scope, ...] = ()


class _KeysFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    keys: list[_FileKey] = Field(default_factory=list)


def parse_env_keys(value: str, var: str = "KAIROS_API_KEYS") -> list[ApiKey]:
    """`name:key:scope,scope` entries separated by `;` or whitespace → keys (raw keys hashed, then
    dropped). A ConfigError names the entry by position and name, never by its key."""
    out = []
    for i, entry in enumerate(e for e in re.split(r"[;\s]+", value) if e):
        parts = entry.split(":")
        where = f"{var} entry {i + 1}"
        if len(parts) != 3:
            raise ConfigError(
                f"{where}: expected name:key:scope[,scope...] ({len(parts)} ':'-separated fields; a key "
                "may not contain ':', ';' or whitespace)"
            )
        name, key, scope_list = parts
        if not _NAME.match(name):
            raise ConfigError(f"{where}: name must be 1-64 letters, digits, '.', '_' or '-'")
        where = f"{where} ({name!r})"
        if len(key) < MIN_KEY_CHARS or not _KEY_CHARS.match(key):
            raise ConfigError(
                f"{where}: a key must be at least {MIN_KEY_CHARS} printable characters of random "
                f"(make one: python -m serving.auth new {name} SCOPE...)"
            )
        scopes = frozenset(s for s in re.split(r"[,+]", scope_list) if s)
        unknown = sorted(scopes - set(SCOPES))
        if unknown:
            raise ConfigError(f"{where}: unknown scope(s) {unknown}; allowed: {', '.join(SCOPES)}")
        out.append(ApiKey(name, digest(key), scopes))
    return out


def load_keyring(cfg: AuthConfig, environ: Mapping[str, str]) -> KeyRing:
    """The keys of `cfg.keys_file` and of the environment variable `cfg.keys_env` (both, when both are
    set). Raises ConfigError on a malformed entry, and when `cfg.required` and there is no key."""
    keys: list[ApiKey] = []
    if cfg.keys_file is not None:
        parsed = parse_config(_KeysFile, read_yaml(cfg.keys_file), cfg.keys_file)
        keys += [ApiKey(k.name, bytes.fromhex(k.sha256), frozenset(k.scopes)) for k in parsed.keys]
    keys += parse_env_keys(environ.get(cfg.keys_env, ""), cfg.keys_env)
    names = [k.name for k in keys]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"API key name(s) {dup} used twice; each key needs its own name (logs show it)")
    ring = KeyRing(keys)
    if cfg.required and not ring:
        raise ConfigError(
            f"api.auth.required is true but no API key is configured: set {cfg.keys_env} or "
            "api.auth.keys_file (make a key: python -m serving.auth new NAME SCOPE...)"
        )
    return ring


# ---- ASGI middleware ---------------------------------------------------------------------------


def _bearer(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
    """(token, header present) from `Authorization: Bearer <token>`."""
    for k, v in headers:
        if k == b"authorization":
            scheme, _, token = v.decode("latin-1").strip().partition(" ")
            token = token.strip()
            return (token if scheme.lower() == "bearer" and token else None), True
    return None, False


def _pop_query_token(scope: dict[str, Any]) -> str | None:
    """Remove `token=...` from a WebSocket's query string (in place: uvicorn logs this scope's path and
    query at accept time) and return its value."""
    qs: bytes = scope.get("query_string", b"")
    if b"token=" not in qs:
        return None
    token, kept = None, []
    for part in qs.split(b"&"):
        if part.startswith(b"token="):
            from urllib.parse import unquote_to_bytes

            token = unquote_to_bytes(part[6:].replace(b"+", b" ")).decode("utf-8", "replace")
        else:
            kept.append(part)
    scope["query_string"] = b"&".join(kept)
    return token


class AuthMiddleware:
    """Pure ASGI middleware checking the bearer key of every HTTP request and WebSocket handshake.

    `on_refused(reason)` ("unauthenticated" | "forbidden") counts refusals (Prometheus)."""

    def __init__(
        self,
        app: Any,
        keys: KeyRing,
        open_paths: Iterable[str] = (),
        on_refused: Callable[[str], None] | None = None,
    ):
        self.app, self.keys, self.open = app, keys, frozenset(open_paths)
        self.on_refused = on_refused or (lambda reason: None)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        query_token = _pop_query_token(scope) if kind == "websocket" else None
        path = scope["path"]
        if not self.keys or path in self.open:
            return await self.app(scope, receive, send)
        token, present = _bearer(scope.get("headers", ()))
        if token is None and not present:
            token = query_token
        need = required_scope(kind, path)
        method = scope.get("method", "WS")
        if token is None:
            why = (
                "Authorization header must be 'Bearer <API key>'"
                if present
                else "missing API key: send the header 'Authorization: Bearer <API key>'"
                + (" or the query parameter ?token=<API key>" if kind == "websocket" else "")
            )
            return await self._refuse(scope, receive, send, 401, why, "unauthenticated", need)
        key = self.keys.lookup(token)
        if key is None:
            log.debug("refused %s %s: unknown API key", method, path)
            return await self._refuse(scope, receive, send, 401, "invalid API key", "unauthenticated", need)
        if need is not None and not key.allows(need):
            log.debug("refused %s %s: key %r lacks scope %r", method, path, key.name, need)
            why = f"API key {key.name!r} lacks scope {need!r}, needed for {method} {path}"
            return await self._refuse(scope, receive, send, 403, why, "forbidden", need)
        scope["kairos.api_key"] = key.name  # for handlers that want to know who called
        return await self.app(scope, receive, send)

    async def _refuse(
        self,
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        status: int,
        why: str,
        reason: str,
        need: str | None,
    ) -> None:
        self.on_refused(reason)
        body: dict[str, Any] = {"error": why}
        if need is not None:
            body["required_scope"] = need
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            await send(
                {"type": "websocket.send", "text": json.dumps({"type": "error", "status": status, **body})}
            )
            await send({"type": "websocket.close", "code": 1008, "reason": f"{status}: {why}"[:120]})
            return
        if status == 401:
            challenge = 'Bearer realm="kairos"' + (
                ', error="invalid_token"' if why == "invalid API key" else ""
            )
        else:  # RFC 6750 §3.1
            challenge = f'Bearer realm="kairos", error="insufficient_scope", scope="{need}"'
        data = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"www-authenticate", challenge.encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


# ---- logs --------------------------------------------------------------------------------------

_HEADER = re.compile(r"(?i)(authorization:\s*)[^\r\n\"']+")  # the whole value: any scheme, the key
_QUERY = re.compile(r"(?i)([?&]token=)[^\s&\"']+")


class RedactSecrets(logging.Filter):
    """Replaces `Authorization: ...` header values and `token=...` query values in log records with
    `[redacted]`. At debug level the WebSocket library logs every handshake line, headers included
    (on the `uvicorn.error` logger), before any middleware runs: this filter keeps keys out of them.
    Cost: two regex searches per log record, nothing per request that logs nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: the handler reports it, not us
            return True
        clean = _QUERY.sub(r"\1[redacted]", _HEADER.sub(r"\1[redacted]", msg))
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def redact_secrets_in_logs() -> None:
    """Add `RedactSecrets` to the handlers of the root and uvicorn loggers (call after uvicorn set up
    its logging, i.e. after `uvicorn.Config(...)`) and to those loggers themselves."""
    f = RedactSecrets()
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "kairos"):
        logger = logging.getLogger(name)
        logger.addFilter(f)
        for h in logger.handlers:
            h.addFilter(f)


# ---- key making (operators) --------------------------------------------------------------------


def new_key(name: str, scopes: Iterable[str]) -> dict[str, str]:
    """A fresh random key and how to configure it (env entry, keys_file entry)."""
    if not _NAME.match(name):
        raise ConfigError("name must be 1-64 letters, digits, '.', '_' or '-'")
    scopes = list(dict.fromkeys(scopes))
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ConfigError(f"unknown scope(s) {unknown}; allowed: {', '.join(SCOPES)}")
    key = secrets.token_urlsafe(32)
    return {
        "key": key,
        "env": f"{name}:{key}:{','.join(scopes)}",
        "keys_file": f"  - {{name: {name}, sha256: {digest(key).hex()}, scopes: [{', '.join(scopes)}]}}",
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.auth new NAME SCOPE...` | `python -m serving.auth hash` (key on stdin)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["new"] and len(args) >= 2:
        try:
            made = new_key(args[1], args[2:])
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"key (give it to the client; it is stored nowhere): {made['key']}")
        print(f"{'KAIROS_API_KEYS'} entry: {made['env']}")
        print(f"api.auth.keys_file entry (under keys:):\n{made['keys_file']}")
        return 0
    if args[:1] == ["hash"]:
        print(digest(sys.stdin.readline().strip()).hex())
        return 0
    print(
        f"usage: python -m serving.auth new NAME [{'|'.join(SCOPES)}]...\n       python -m serving.auth hash < key"
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
