"""Webhooks: subscriptions to the event feed, delivered from the outbox by a loop in the
job workers, signed as Standard Webhooks do, retried with backoff, never lost on restart."""
