"""Opt-in traces the usual way: `SSLKEYLOGFILE` for TLS secrets, `QLOGDIR` for qlog."""

from __future__ import annotations

import os
from pathlib import Path

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.logger import QuicFileLogger


def enable_debug_logs(configuration: QuicConfiguration) -> None:
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog:
        # Line-buffered append: several connections and processes may share the file.
        configuration.secrets_log_file = open(keylog, "a", buffering=1)  # noqa: SIM115
    qlog_dir = os.environ.get("QLOGDIR")
    if qlog_dir:
        Path(qlog_dir).mkdir(parents=True, exist_ok=True)
        configuration.quic_logger = QuicFileLogger(qlog_dir)
