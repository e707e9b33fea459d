"""Per-path congestion control written against a small interface (`base.py`), with
BBR (`bbr.py`) and the adapter that registers it with aioquic as "bbr"."""

from .aioquic_adapter import CONGESTION_CONTROLS, DEFAULT_CONGESTION_CONTROL, ControllerAdapter
from .base import PathCongestionController, RateSample, SentState
from .bbr import Bbr, State
from .sampler import DeliveryRateSampler

__all__ = [
    "CONGESTION_CONTROLS",
    "DEFAULT_CONGESTION_CONTROL",
    "Bbr",
    "ControllerAdapter",
    "DeliveryRateSampler",
    "PathCongestionController",
    "RateSample",
    "SentState",
    "State",
]
