"""Multipath QUIC (draft-ietf-quic-multipath-21) on top of aioquic, sans-IO."""
