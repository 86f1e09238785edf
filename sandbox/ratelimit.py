"""Discord's REST rate limits, as the sandbox applies them: per-route buckets and a global limit.

Every answer of a limited route carries Discord's ``X-RateLimit-*`` headers; a request over a limit
gets Discord's 429 (https://discord.com/developers/docs/topics/rate-limits): ``retry_after`` in
seconds, ``global``, and the ``X-RateLimit-Scope`` header. discord.py reads these headers to pace
itself, and sleeps ``retry_after`` on a 429 before it tries again.

Limits are counted per bucket and per top-level resource in the path (a channel, a server or a
webhook), in fixed windows that begin with the window's first request, as Discord counts them.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field, replace

# The top-level resources Discord counts per-route limits for separately.
MAJOR_PARAMETERS = ("channel_id", "guild_id", "webhook_id")


@dataclass(frozen=True)
class Limit:
    """``count`` requests per ``per`` seconds, in bucket ``name`` (routes may share a bucket)."""

    name: str
    count: int
    per: float


@dataclass(frozen=True)
class RateLimits:
    """The limits one sandbox applies. ``routes`` maps ``"METHOD /route/{template}"`` (under /api/v10)
    to its limit; other routes share :attr:`default`'s size in a bucket of their own.

    :meth:`discord` is Discord's published limits (the default); :meth:`scaled` keeps the same
    counts in shorter windows for tests that must not wait; :meth:`off` applies none."""

    routes: dict[str, Limit] = field(default_factory=dict)
    default: Limit | None = None
    global_count: int = 0  # requests per global_per seconds, all routes together (0: no global limit)
    global_per: float = 1.0

    @classmethod
    def discord(cls) -> RateLimits:
        """Discord's limits where it publishes them: 5 messages per 5 s in a channel (the docs' own
        example of a per-route limit) and 50 requests per second in all (the global limit). Reactions
        are limited to 1 per 0.25 s per channel as Discord answers them; the routes Discord publishes
        no figure for get a bucket of 50 per second, so only the global limit really holds them back."""
        reactions = Limit("reactions", 1, 0.25)
        base = "/channels/{channel_id}/messages/{message_id}/reactions"
        return cls(
            routes={
                "POST /channels/{channel_id}/messages": Limit("messages", 5, 5.0),
                f"PUT {base}/{{emoji}}/@me": reactions,
                f"DELETE {base}/{{emoji}}/{{user}}": reactions,
            },
            default=Limit("", 50, 1.0), global_count=50, global_per=1.0,
        )

    @classmethod
    def off(cls) -> RateLimits:
        return cls()

    def scaled(self, factor: float) -> RateLimits:
        """The same counts in windows ``factor`` times as long (0.1: a tenth of the wait)."""
        return replace(
            self, routes={k: replace(v, per=v.per * factor) for k, v in self.routes.items()},
            default=replace(self.default, per=self.default.per * factor) if self.default else None,
            global_per=self.global_per * factor,
        )

    def limit_for(self, route: str) -> Limit | None:
        found = self.routes.get(route)
        if found is None and self.default is not None:
            found = replace(self.default, name=route)
        return found


@dataclass
class _Window:
    ends: float
    remaining: int


@dataclass(frozen=True)
class Verdict:
    """What the limiter says about one request: the headers its answer carries and, when it is
    refused, Discord's 429 body and the limit's scope (``"user"`` or ``"global"``)."""

    headers: dict[str, str]
    retry_after: float = 0.0
    scope: str = ""

    @property
    def refused(self) -> bool:
        return bool(self.scope)

    def body(self) -> dict[str, object]:
        return {"message": "You are being rate limited.", "retry_after": round(self.retry_after, 3),
                "global": self.scope == "global"}


class RateLimiter:
    """Counts requests against :class:`RateLimits` (monotonic clock; ``X-RateLimit-Reset`` in epoch seconds)."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self._windows: dict[str, _Window] = {}
        self._global = _Window(0.0, 0)
        self.refused: list[str] = []  # "METHOD route (scope)" of every 429, in order

    def check(self, method: str, route: str, params: dict[str, str]) -> Verdict:
        """Count a request to ``route`` (its template) with these path ``params``."""
        now = time.monotonic()
        key = f"{method} {route}"
        if self.limits.global_count:
            if now >= self._global.ends:
                self._global = _Window(now + self.limits.global_per, self.limits.global_count)
            if self._global.remaining <= 0:
                wait = self._global.ends - now
                self.refused.append(f"{key} (global)")
                return Verdict({"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global",
                                "Retry-After": str(math.ceil(wait))}, wait, "global")
            self._global.remaining -= 1
        limit = self.limits.limit_for(key)
        if limit is None:
            return Verdict({})
        major = ":".join(params[p] for p in MAJOR_PARAMETERS if p in params)
        window_key = f"{limit.name}:{major}"
        window = self._windows.get(window_key)
        if window is None or now >= window.ends:
            window = self._windows[window_key] = _Window(now + limit.per, limit.count)
        reset_after = window.ends - now
        headers = {
            "X-RateLimit-Limit": str(limit.count),
            "X-RateLimit-Remaining": str(max(window.remaining - 1, 0)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": hashlib.sha256(limit.name.encode()).hexdigest()[:32],
        }
        if window.remaining <= 0:
            self.refused.append(f"{key} (user)")
            headers.update({"X-RateLimit-Scope": "user", "Retry-After": str(math.ceil(reset_after))})
            return Verdict(headers, reset_after, "user")
        window.remaining -= 1
        return Verdict(headers)
