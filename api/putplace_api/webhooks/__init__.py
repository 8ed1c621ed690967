"""Webhook notifications: admin-managed subscriptions, a delivery queue in the database, and a
delivery worker in every API process.

``events.py`` turns what a request did into queued deliveries (before the response goes out);
``worker.py`` sends them, signed (``signing.py``), in order per subscription, with retries and
a dead-letter list. The routes are ``putplace_api.routes.webhooks``; the store methods are the
webhook section of ``putplace_api.store``.
"""

from putplace_api.webhooks.events import Webhooks, enqueue
from putplace_api.webhooks.signing import sign, verify_signature

__all__ = ["Webhooks", "enqueue", "sign", "verify_signature"]
