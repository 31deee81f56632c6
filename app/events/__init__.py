"""The event feed: the outbox's events (:mod:`app.core.outbox`) read by page, by long
poll and as Server-Sent Events."""
