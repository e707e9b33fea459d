"""Per-path congestion control written against a small interface (`base.py`), with
BBR (`bbr.py`) and the adapter that registers it with aioquic as "bbr"; RFC 6356
LIA and OLIA (`coupled.py`), NewReno with increases coupled across a connection's
paths, registered as "lia" and "olia"."""

from .aioquic_adapter import CONGESTION_CONTROLS, DEFAULT_CONGESTION_CONTROL, ControllerAdapter
from .base import PathCongestionController, RateSample, SentState
from .bbr import Bbr, State
from .coupled import CoupledGroup, LiaCongestionControl, OliaCongestionControl, coupling
from .sampler import DeliveryRateSampler

__all__ = [
    "CONGESTION_CONTROLS",
    "DEFAULT_CONGESTION_CONTROL",
    "Bbr",
    "ControllerAdapter",
    "CoupledGroup",
    "DeliveryRateSampler",
    "LiaCongestionControl",
    "OliaCongestionControl",
    "PathCongestionController",
    "RateSample",
    "SentState",
    "State",
    "coupling",
]
