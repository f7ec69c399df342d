"""The error tree every component raises from; the engine decides what each means."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid: refuse to start, or refuse the reload."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class RetryableError(GatewayError):
    """A transient failure (connection lost, timeout): back off and try again."""


class RetryLater(RetryableError):
    """A transient failure whose peer said when to come back (HTTP 429/503 Retry-After):
    the engine waits at least `after` seconds, within the retry cap."""

    def __init__(self, message: str, after: float) -> None:
        super().__init__(message)
        self.after = after


class MissingError(RetryableError):
    """What the config names does not exist (a serial port, a host name that does not
    resolve). Retried like any RetryableError (an adapter may be plugged in later), but a
    reload that starts a component on it is rolled back: the new config names a thing
    that is not there."""


class PermanentError(GatewayError):
    """This data or component can never succeed: dead-letter it or disable the component."""


def error_text(err: BaseException) -> str:
    """An exception's message on one line, or its class name when it has none (a
    timeout's or a dropped connection's str() is empty: "failed: " said nothing)."""
    return " ".join(str(err).split()) or type(err).__name__
