"""A TLS session ticket as aioquic's server makes one, for the ticket-sealing tests."""

from __future__ import annotations

import datetime
import os
from typing import Any

from aioquic import tls


def session_ticket(issued: datetime.datetime | None = None, **changes: Any) -> tls.SessionTicket:
    """Valid for a day from `issued` (now); `changes` override any field."""
    if issued is None:
        issued = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    fields: dict[str, Any] = {
        "age_add": 7,
        "cipher_suite": tls.CipherSuite.AES_128_GCM_SHA256,
        "not_valid_after": issued + datetime.timedelta(days=1),
        "not_valid_before": issued,
        "resumption_secret": os.urandom(32),
        "server_name": "localhost",
        "ticket": b"",
    }
    return tls.SessionTicket(**{**fields, **changes})
