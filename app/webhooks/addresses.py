"""Where webhooks may point: checked at creation and again before every attempt.

The policy is shared with exporters' destinations (app.engine.export.addresses)."""

from __future__ import annotations

from app.engine.export import addresses
from app.engine.export.addresses import RefusedAddress

__all__ = ["RefusedAddress", "check_url"]


def check_url(url: str, allow_private: bool) -> None:
    """http(s) only; every address the host resolves to must be public unless ``allow_private``
    (a tenant must not make the workers probe the service's own network). Checked at creation
    and again before every attempt: a name can be re-pointed after it was checked."""
    addresses.check_url(url, allow_private,
                        credentials_advice="authenticate deliveries with their signature",
                        purpose="webhooks", setting="LATHE_WEBHOOK_ALLOW_PRIVATE")
