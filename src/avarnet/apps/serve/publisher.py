"""The interface every output of the server implements (MQTT, webhook, Home Assistant, ...).

Every method is optional: the base class does nothing. Implementations import this module (not
:mod:`.publish`, which builds them), so the import graph has no cycle.
"""

from __future__ import annotations


class Publisher:
    """One output of the server. Methods are called from the server's threads and must not block
    (queue the work; deliver from the publisher's own thread)."""

    name: str = "publisher"

    def start(self) -> None:
        """Connect / start the publisher's threads."""

    def event(
        self, kind: str, before: dict | None, after: dict, record: dict | None = None
    ) -> None:
        """An event changed: ``kind`` is ``"new"``, ``"update"`` or ``"end"``; ``before`` and
        ``after`` are the event as messages carry it; ``record`` (for ``"new"`` only) is the
        alert record of the event that opened it."""

    def anomaly(self, camera: str, payload: dict) -> None:
        """One segment's score and label (a live value: may be skipped while disconnected)."""

    def state(self, camera: str, payload: dict) -> None:
        """A camera's state changed (status, error, label, score, open event)."""

    def cameras(self, cameras: list[dict]) -> None:
        """The configured cameras, once at start (``name``, ``classes``, ``threshold``, ...)."""

    def flush(self, timeout_s: float) -> int:
        """Deliver what is pending within ``timeout_s``; returns the messages left undelivered."""
        return 0

    def close(self) -> None:
        """Stop (after :meth:`flush`); what is left stays wherever the publisher keeps it."""

    def stats(self) -> dict | None:
        """Counters for the statistics page; None when there is nothing to show."""
        return None

    @property
    def error(self) -> str | None:
        """Why this publisher is unhealthy now (e.g. its delivery thread failed), else None.
        Never holds credentials."""
        return None
