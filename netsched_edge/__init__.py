"""NetSched edge: the SLO-aware QUIC scheduler that operators run."""
