"""The project's own exceptions.

Domain modules raise these; cogs (or the global error handler) turn them into one
friendly line in the channel. ``str(exc)`` is always safe to show a user.
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base class: something the user can be told about in one line.

    ``helps``: a command that helps next, without the prefix, and what it does, e.g. ``("review", "lists the
    pending ones")``: the domain names no prefix; a cog adds "`!review` lists the pending ones." with the
    server's own (``commands._shared.user_line``).
    """

    def __init__(self, message: str = "", *, helps: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        self.helps = helps


class ConfigError(TrainerError):
    """A bad configuration value; the message names the variable."""


class PathRefused(TrainerError):
    """A user-typed path that would leave the guild's space or touch a hidden file."""


class NotFound(TrainerError):
    """A file, folder, message, job or model that does not exist."""


class InvalidInput(TrainerError):
    """Malformed user input: bad JSON, wrong file type, empty file, ..."""


class TooLarge(TrainerError):
    """Something over a configured or Discord-imposed size limit."""


class BackendError(TrainerError):
    """A training/answering/speech backend failed; the message is safe to show."""

    status: int | None = None  # the HTTP status of a refused OpenAI call, if that is what failed


class Busy(TrainerError):
    """A bounded queue is full; try again later."""


class NotSaved(TrainerError):
    """A write failed (read-only folder, full disk): nothing of it was kept, and the message says so."""


class OverBudget(TrainerError):
    """A member used today's paid calls (PAID_CALLS_PER_USER_PER_DAY): the limit, and when they reset (Unix time).

    ``str()`` is plain text; a cog shows the reset in each reader's own time (``commands._shared.user_line``).
    """

    def __init__(self, limit: int, resets_at: int) -> None:
        super().__init__(f"You've used your {limit} paid calls for today (OpenAI answers, transcriptions and "
                         f"spoken answers); they reset at midnight UTC.")
        self.limit = limit
        self.resets_at = resets_at
