"""Sends the outbox: every worker process runs one dispatcher thread (``lathe serve``'s worker
too), beside its jobs, so a delivery never waits behind an hour-long job and no request ever
waits on a receiver.

A round claims the deliveries that are due (a conditional UPDATE pushes their next attempt past
the send's timeout: a lease, so two dispatchers don't send the same one at once, and one that
dies mid-send leaves it to be retried), sends each, and records the attempt: delivered on a
2xx, else retried after the next wait of ``Settings.webhook_retry_s``, given up after the last.
At least once: a receiver deduplicates with the ``webhook-id`` header.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from app.db import transaction, utcnow
from app.records import DeliveryRecord, WebhookRecord
from app.settings import Settings
from app.webhooks.outbox import sign
from app.webhooks.addresses import RefusedAddress, check_url

log = logging.getLogger("lathe.webhooks")
BATCH = 20
USER_AGENT = "Lathe-Webhooks/1"


class Dispatcher(threading.Thread):
    def __init__(self, settings: Settings, maker: sessionmaker) -> None:
        super().__init__(name="lathe-webhooks", daemon=True)
        self.settings, self.maker = settings, maker
        self.stopped = threading.Event()
        self.http = httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False,
                                 headers={"User-Agent": USER_AGENT})

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                while self.round() and not self.stopped.is_set():
                    pass
            except Exception:  # noqa: BLE001 - the database may be briefly away; try again next round
                log.warning("webhook round failed", exc_info=True)
            self.stopped.wait(self.settings.webhook_poll_s)
        self.http.close()

    def stop(self) -> None:
        self.stopped.set()

    def round(self) -> int:
        """Claim and send what is due; how many were sent."""
        claimed = self.claim()
        for delivery in claimed:
            self.record(delivery["id"], *self.send(delivery))
        return len(claimed)

    def claim(self) -> list[dict[str, Any]]:
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.webhook_timeout_s + 30)
        with transaction(self.maker) as s:
            due = s.execute(
                select(DeliveryRecord.id, DeliveryRecord.next_attempt_at, DeliveryRecord.payload,
                       WebhookRecord.url, WebhookRecord.secret)
                .join(WebhookRecord, WebhookRecord.id == DeliveryRecord.webhook_id)
                .where(DeliveryRecord.status == "pending", DeliveryRecord.next_attempt_at <= now)
                .order_by(DeliveryRecord.next_attempt_at).limit(BATCH)).all()
            claimed = []
            for row in due:
                taken = s.execute(update(DeliveryRecord).where(
                    DeliveryRecord.id == row.id, DeliveryRecord.status == "pending",
                    DeliveryRecord.next_attempt_at == row.next_attempt_at).values(next_attempt_at=lease)
                    .execution_options(synchronize_session=False)).rowcount
                if taken == 1:
                    claimed.append({"id": row.id, "payload": row.payload, "url": row.url, "secret": row.secret})
        return claimed

    def send(self, delivery: dict[str, Any]) -> tuple[int | None, str | None, float]:
        """(status code, error, seconds) of one attempt."""
        body = json.dumps(delivery["payload"], separators=(",", ":"))
        stamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": delivery["id"],
                   "webhook-timestamp": str(stamp),
                   "webhook-signature": sign(delivery["secret"], delivery["id"], stamp, body)}
        started = time.monotonic()
        try:
            check_url(delivery["url"], self.settings.webhook_allow_private)
            r = self.http.post(delivery["url"], content=body.encode(), headers=headers)
            return r.status_code, None if r.is_success else f"HTTP {r.status_code}", time.monotonic() - started
        except RefusedAddress as exc:
            return None, f"refused: {exc}", time.monotonic() - started
        except httpx.TimeoutException:
            return None, f"no answer within {self.settings.webhook_timeout_s:g} s", time.monotonic() - started
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:300], time.monotonic() - started

    def record(self, delivery_id: str, code: int | None, error: str | None, seconds: float) -> None:
        now = utcnow()
        with transaction(self.maker) as s:
            delivery = s.get(DeliveryRecord, delivery_id)
            if delivery is None:  # its webhook was deleted meanwhile
                return
            attempts = [*delivery.attempts, {"at": now.isoformat(), "status_code": code, "error": error,
                                             "duration_ms": round(seconds * 1000, 1)}]
            waits = self.settings.webhook_retry_s
            if error is None:
                status, next_at = "delivered", None
            elif len(attempts) <= len(waits):
                status, next_at = "pending", now + timedelta(seconds=waits[len(attempts) - 1])
            else:
                status, next_at = "failed", None
            delivery.attempts, delivery.status, delivery.next_attempt_at = attempts, status, next_at
        if error:
            log.info("webhook delivery %s: %s (%s)", delivery_id, error, status)
