"""picoquic's C API through ctypes, on the shared object aiopquic 0.6.1 ships.

aiopquic's Python API exposes no multipath call, but its `_transport` module
exports picoquic 1.1.53's symbols (DESIGN.md §2), so the declarations below
are taken from picoquic.h. Layouts and enum values that we rely on are checked
against known values by tests/test_picoquic_multipath.py (see `transport_info`).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from typing import Any

from aiopquic._binding import _transport  # type: ignore[import-not-found, unused-ignore]

LIB = ctypes.CDLL(_transport.__file__)

# picoquic_call_back_event_t (picoquic.h), the values the peers act on.
EVENT_STREAM_DATA = 0
EVENT_STREAM_FIN = 1
EVENT_STREAM_RESET = 2
EVENT_CLOSE = 5
EVENT_APPLICATION_CLOSE = 6
EVENT_READY = 10
EVENT_PATH_AVAILABLE = 20
EVENT_PATH_SUSPENDED = 21
EVENT_PATH_DELETED = 22
EVENT_PATH_QUALITY_CHANGED = 23
EVENT_NEXT_PATH_ALLOWED = 26
PATH_EVENTS = {
    EVENT_PATH_AVAILABLE: "available",
    EVENT_PATH_SUSPENDED: "suspended",
    EVENT_PATH_DELETED: "deleted",
    EVENT_PATH_QUALITY_CHANGED: "quality_changed",
}
STATE_DISCONNECTED = 19  # picoquic_state_disconnected
ALPN = b"hq-interop"
MULTIPATH_ON = 1  # picoquic's multipath option: advertise initial_max_path_id (picoquic sends 2)
MAX_UNIQUE_PATH_ID = 16  # more than either side allows (picoquic offers 2, we offer 3)

StreamCallback = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,  # cnx
    ctypes.c_uint64,  # stream id, or unique path id for path events
    ctypes.c_void_p,  # bytes
    ctypes.c_size_t,  # length
    ctypes.c_int,  # event
    ctypes.c_void_p,  # callback ctx
    ctypes.c_void_p,  # stream ctx
)

# struct sockaddr_storage: 128 bytes, 8-byte aligned.
SockaddrStorage = ctypes.c_uint64 * 16


QUALITY_FIELDS = (
    "receive_rate_estimate",
    "pacing_rate",
    "cwin",
    "rtt",
    "rtt_sample",
    "rtt_variant",
    "rtt_min",
    "rtt_max",
    "sent",
    "lost",
    "timer_losses",
    "spurious_losses",
    "max_spurious_rtt",
    "max_reorder_delay",
    "max_reorder_gap",
    "bytes_in_transit",
    "bytes_sent",
    "bytes_received",
)


class PathQuality(ctypes.Structure):
    """picoquic_path_quality_t: 18 counters, all uint64_t."""

    _fields_ = [(name, ctypes.c_uint64) for name in QUALITY_FIELDS]


class _ConnectionId(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint8 * 20), ("id_len", ctypes.c_uint8)]


class _PreferredAddress(ctypes.Structure):
    _fields_ = [
        ("is_defined", ctypes.c_int),
        ("ipv4_address", ctypes.c_uint8 * 4),
        ("ipv4_port", ctypes.c_uint16),
        ("ipv6_address", ctypes.c_uint8 * 16),
        ("ipv6_port", ctypes.c_uint16),
        ("connection_id", _ConnectionId),
        ("reset_token", ctypes.c_uint8 * 16),
    ]


class _VersionNegotiation(ctypes.Structure):
    _fields_ = [
        ("current", ctypes.c_uint32),
        ("previous", ctypes.c_uint32),
        ("nb_received", ctypes.c_size_t),
        ("received", ctypes.c_void_p),
        ("nb_supported", ctypes.c_size_t),
        ("supported", ctypes.c_void_p),
    ]


class TransportParameters(ctypes.Structure):
    """picoquic_tp_t up to initial_max_path_id (the fields after it are not read)."""

    _fields_ = [
        ("initial_max_stream_data_bidi_local", ctypes.c_uint64),
        ("initial_max_stream_data_bidi_remote", ctypes.c_uint64),
        ("initial_max_stream_data_uni", ctypes.c_uint64),
        ("initial_max_data", ctypes.c_uint64),
        ("initial_max_stream_id_bidir", ctypes.c_uint64),
        ("initial_max_stream_id_unidir", ctypes.c_uint64),
        ("max_idle_timeout", ctypes.c_uint64),
        ("max_packet_size", ctypes.c_uint32),
        ("max_ack_delay", ctypes.c_uint32),
        ("active_connection_id_limit", ctypes.c_uint32),
        ("ack_delay_exponent", ctypes.c_uint8),
        ("migration_disabled", ctypes.c_uint),
        ("preferred_address", _PreferredAddress),
        ("max_datagram_frame_size", ctypes.c_uint32),
        ("enable_loss_bit", ctypes.c_int),
        ("enable_time_stamp", ctypes.c_int),
        ("min_ack_delay", ctypes.c_uint64),
        ("do_grease_quic_bit", ctypes.c_int),
        ("version_negotiation", _VersionNegotiation),
        ("enable_bdp_frame", ctypes.c_int),
        ("initial_max_path_id", ctypes.c_uint64),
    ]


def _declare(name: str, restype: Any, *argtypes: Any) -> Any:
    function = getattr(LIB, name)
    function.restype = restype
    function.argtypes = list(argtypes)
    return function


_p = ctypes.c_void_p
_u64 = ctypes.c_uint64
_int = ctypes.c_int
_buffer = ctypes.POINTER(ctypes.c_char)

create = _declare(
    "picoquic_create",
    _p,
    ctypes.c_uint32,
    ctypes.c_char_p,  # cert file
    ctypes.c_char_p,  # key file
    ctypes.c_char_p,  # cert root file
    ctypes.c_char_p,  # default ALPN
    StreamCallback,
    _p,
    _p,  # cnx id callback
    _p,
    _p,  # reset seed
    _u64,  # current time
    _p,  # simulated time
    ctypes.c_char_p,  # ticket file
    _p,  # ticket key
    ctypes.c_size_t,
)
free = _declare("picoquic_free", None, _p)
current_time = _declare("picoquic_current_time", _u64)
set_default_multipath_option = _declare("picoquic_set_default_multipath_option", None, _p, _int)
enable_path_callbacks_default = _declare("picoquic_enable_path_callbacks_default", None, _p, _int)
set_null_verifier = _declare("picoquic_set_null_verifier", None, _p)
set_qlog = _declare("picoquic_set_qlog", _int, _p, ctypes.c_char_p)
enable_sslkeylog = _declare("picoquic_enable_sslkeylog", None, _p, _int)
set_key_log_file = _declare("picoquic_set_key_log_file", None, _p, ctypes.c_char_p)
create_client_cnx = _declare(
    "picoquic_create_client_cnx",
    _p,
    _p,
    ctypes.POINTER(SockaddrStorage),
    _u64,
    ctypes.c_uint32,
    ctypes.c_char_p,
    ctypes.c_char_p,
    StreamCallback,
    _p,
)
get_cnx_state = _declare("picoquic_get_cnx_state", _int, _p)
get_first_cnx = _declare("picoquic_get_first_cnx", _p, _p)
get_next_cnx = _declare("picoquic_get_next_cnx", _p, _p)
add_to_stream = _declare(
    "picoquic_add_to_stream", _int, _p, _u64, ctypes.c_char_p, ctypes.c_size_t, _int
)
reset_stream = _declare("picoquic_reset_stream", _int, _p, _u64, _u64)
close = _declare("picoquic_close", _int, _p, _u64)
get_local_error = _declare("picoquic_get_local_error", _u64, _p)
get_remote_error = _declare("picoquic_get_remote_error", _u64, _p)
get_application_error = _declare("picoquic_get_application_error", _u64, _p)
get_transport_parameters = _declare(
    "picoquic_get_transport_parameters", ctypes.POINTER(TransportParameters), _p, _int
)
subscribe_new_path_allowed = _declare(
    "picoquic_subscribe_new_path_allowed", _int, _p, ctypes.POINTER(_int)
)
probe_new_path = _declare(
    "picoquic_probe_new_path",
    _int,
    _p,
    ctypes.POINTER(SockaddrStorage),
    ctypes.POINTER(SockaddrStorage),
    _u64,
)
abandon_path = _declare("picoquic_abandon_path", _int, _p, _u64, _u64, _u64)
get_path_quality = _declare(
    "picoquic_get_path_quality", _int, _p, _u64, ctypes.POINTER(PathQuality)
)
incoming_packet_ex = _declare(
    "picoquic_incoming_packet_ex",
    _int,
    _p,
    _buffer,
    ctypes.c_size_t,
    ctypes.POINTER(SockaddrStorage),
    ctypes.POINTER(SockaddrStorage),
    _int,  # if index
    ctypes.c_ubyte,  # ECN
    ctypes.POINTER(_p),  # first cnx (out)
    _u64,
)
prepare_next_packet_ex = _declare(
    "picoquic_prepare_next_packet_ex",
    _int,
    _p,
    _u64,
    _buffer,
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_size_t),  # length (out)
    ctypes.POINTER(SockaddrStorage),  # to (out)
    ctypes.POINTER(SockaddrStorage),  # from (out)
    ctypes.POINTER(_int),  # if index (out)
    _buffer,  # log cid (out)
    ctypes.POINTER(_p),  # last cnx (in/out)
    ctypes.POINTER(ctypes.c_size_t),  # GSO segment size: NULL, one packet per call
)
get_next_wake_delay = _declare(
    "picoquic_get_next_wake_delay", ctypes.c_int64, _p, _u64, ctypes.c_int64
)


_sort_key_exchanges = _declare(
    "picoquic_sort_key_exchange_algorithms", None, ctypes.POINTER(ctypes.c_uint16), ctypes.c_size_t
)
# IANA group ids; classic groups first, the order aiopquic itself applies.
CLASSIC_FIRST_GROUPS = (29, 23, 4588, 4587, 514)  # x25519, secp256r1, then the ML-KEM ones


def prefer_classic_key_exchange() -> None:
    """Send an x25519 key share first, as aiopquic's own API does.

    picoquic 1.1.53's default order puts a post-quantum hybrid first, and picotls
    sends one key share: aioquic (no HelloRetryRequest, no ML-KEM) then fails the
    handshake with "No supported key share" (CRYPTO_ERROR 0x128).
    """
    groups = (ctypes.c_uint16 * len(CLASSIC_FIRST_GROUPS))(*CLASSIC_FIRST_GROUPS)
    _sort_key_exchanges(groups, len(CLASSIC_FIRST_GROUPS))


def new_context(
    callback: Any,
    *,
    cert: str | None = None,
    key: str | None = None,
    qlog: str | None = None,
    keylog: str | None = None,
) -> int:
    """A picoquic context speaking hq-interop with multipath and path events on.

    With `cert` and `key` it accepts connections, else it is a client. `keylog`
    is an NSS key log file (SSLKEYLOGFILE), written until `free`.
    """
    quic = create(
        8,
        None if cert is None else cert.encode(),
        None if key is None else key.encode(),
        None,
        ALPN,
        callback,
        None,
        None,
        None,
        None,
        current_time(),
        None,
        None,
        None,
        0,
    )
    if not quic:
        raise SystemExit("picoquic_create failed (is the certificate or key unreadable?)")
    prefer_classic_key_exchange()  # after create: picoquic applies its default on the first one
    set_default_multipath_option(quic, MULTIPATH_ON)
    enable_path_callbacks_default(quic, 1)
    if qlog is not None:
        set_qlog(quic, qlog.encode())
    if keylog is not None:
        enable_sslkeylog(quic, 1)
        set_key_log_file(quic, keylog.encode())
    return int(quic)


def sockaddr(address: tuple[str, int]) -> Any:
    """An IPv4 `struct sockaddr_in` in a sockaddr_storage (port in network order)."""
    storage = SockaddrStorage()
    packed = struct.pack("=H", socket.AF_INET) + struct.pack("!H", address[1])
    ctypes.memmove(storage, packed + socket.inet_aton(address[0]), 8)
    return storage


def address_of(storage: Any) -> tuple[str, int] | None:
    """The IPv4 address in a sockaddr_storage; None when unset or not IPv4."""
    raw = bytes(storage)
    (family,) = struct.unpack_from("=H", raw)
    if family != socket.AF_INET:
        return None
    (port,) = struct.unpack_from("!H", raw, 2)
    return socket.inet_ntoa(raw[4:8]), port


def path_qualities(cnx: int) -> dict[int, dict[str, int]]:
    """picoquic_get_path_quality for every unique path ID the connection still has."""
    out: dict[int, dict[str, int]] = {}
    for unique_path_id in range(MAX_UNIQUE_PATH_ID):
        quality = PathQuality()
        if get_path_quality(cnx, unique_path_id, ctypes.byref(quality)) == 0:
            out[unique_path_id] = {name: getattr(quality, name) for name in QUALITY_FIELDS}
    return out


def transport_info(cnx: int) -> dict[str, dict[str, int]]:
    """Both sides' transport parameters as picoquic recorded them.

    `initial_max_data` and `max_idle_timeout` are there so the test can check
    the struct layout against the values our side is known to send.
    """

    def read(local: int) -> dict[str, int]:
        tp = get_transport_parameters(cnx, local).contents
        fields = ("initial_max_data", "max_idle_timeout", "initial_max_path_id")
        return {name: int(getattr(tp, name)) for name in fields}

    return {"local": read(1), "remote": read(0)}


def errors(cnx: int) -> dict[str, int]:
    return {
        "local_error": int(get_local_error(cnx)),
        "remote_error": int(get_remote_error(cnx)),
        "application_error": int(get_application_error(cnx)),
    }
