"""What our multipath subclass relies on in aioquic, pinned so an aioquic upgrade fails loudly.

`netsched_client.proto.multipath` swaps aioquic's per-path attributes in and out
(`PATH_ATTRIBUTES`) and overrides or calls its private methods. A new aioquic
release can rename any of them, or change what a method does, without touching
its public API. These tests check that:
- the installed aioquic is the version pinned in pyproject.toml;
- every aioquic attribute we swap or read is still a plain instance attribute of
  the expected type, and every method we rely on is still a method;
- every aioquic function whose *behaviour* we rely on still has the source we
  read (`SOURCE_HASHES`);
- our code uses no aioquic name missing from these lists (an AST scan), so the
  lists grow with the code.

When a source hash changes (an aioquic upgrade): read the upstream diff of that
function, re-check what its entry says, fix our module if needed, then run
tests/test_aioquic_compat.py (aioquic's own suite against our class) and only
then record the new hash (the failure message prints it).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import logging
import pkgutil
import re
import tomllib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any, Final, TypeGuard

import aioquic
import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.cubic import CubicCongestionControl
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.connection import (
    QuicConnection,
    QuicConnectionId,
    QuicConnectionState,
    QuicNetworkPath,
)
from aioquic.quic.crypto import CryptoContext, CryptoPair
from aioquic.quic.logger import QuicLoggerTrace
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import QuicPacketRecovery, QuicPacketSpace
from aioquic.quic.stream import QuicStreamSender
from aioquic.tls import Epoch
from aioquic_suite import AIOQUIC_VERSION
from support import MemoryPair

import netsched_client.proto.connection as netsched_connection
import netsched_client.proto.fec_builder as netsched_fec_builder
import netsched_client.proto.fec_link as netsched_fec_link
import netsched_client.proto.multipath as multipath_package
from netsched_client.proto.connection import NetSchedConnection
from netsched_client.proto.multipath import frames
from netsched_client.proto.multipath.connection import PATH_ATTRIBUTES
from netsched_client.proto.multipath.crypto import PathCrypto
from netsched_edge.tls import generate_self_signed

PYPROJECT: Final = Path(__file__).resolve().parents[1] / "pyproject.toml"
NoneType: Final = type(None)

# aioquic's per-path attributes (PATH_ATTRIBUTES) and their type once connected.
PATH_ATTRIBUTE_KINDS: Final[dict[str, type | tuple[type, ...]]] = {
    "_packet_number": int,
    "_spaces": dict,
    "_loss": QuicPacketRecovery,
    "_loss_at": (float, NoneType),
    "_pacing_at": (float, NoneType),
    "_probe_pending": bool,
    "_host_cids": list,
    "host_cid": bytes,
    "_host_cid_seq": int,
    "_peer_cid": QuicConnectionId,
    "_peer_cid_available": list,
    "_peer_cid_sequence_numbers": set,
    "_peer_retire_prior_to": int,
    "_retire_connection_ids": list,
    "_network_paths": list,
    "_spin_bit": bool,
    "_spin_highest_pn": int,
    "_cryptos": dict,
    "_max_datagram_size": int,  # every builder's size: the path's PMTU
}

# Connection-wide aioquic attributes our subclass reads or replaces.
CONNECTION_ATTRIBUTE_KINDS: Final[dict[str, type | tuple[type, ...]]] = {
    "_QuicConnection__frame_handlers": dict,  # we register the multipath frame types in it
    "_configuration": QuicConfiguration,
    "_datagrams_pending": deque,  # emptied while a backup path sends
    "_events": deque,
    "_handshake_complete": bool,
    "_is_client": bool,
    "_local_ack_delay_exponent": int,
    "_local_initial_source_connection_id": bytes,  # follows our CID factory's first CID
    "_logger": logging.LoggerAdapter,
    "_handshake_confirmed": bool,  # PMTU probes wait for it
    "_quic_logger": (QuicLoggerTrace, NoneType),
    "_remote_ack_delay_exponent": int,
    "_state": QuicConnectionState,
    "_streams_queue": list,  # emptied while a backup path sends
    "_streams_blocked_bidi": list,  # streams past the peer's MAX_STREAMS: nothing leaves
    "_streams_blocked_uni": list,
    "_close_pending": bool,  # CONNECTION_CLOSE must leave even when every path is closing
    "_streams": dict,  # live stream IDs: bounds the send-order priorities
    "_close_at": (float, type(None)),  # None once terminated: no timer may fire then
    "_version": (int, NoneType),
}

# Attributes of other aioquic objects we read or set: "Class.attribute" -> type.
FOREIGN_ATTRIBUTE_KINDS: Final[dict[str, type | tuple[type, ...]]] = {
    "QuicPacketRecovery._pto_count": int,  # the scheduler's stall/dead signal
    "QuicPacketRecovery._rtt_initialized": bool,
    "QuicPacketRecovery._rtt_smoothed": float,
    "QuicPacketRecovery._rtt_initial": float,  # the loss estimator's RTT before a sample
    "QuicPacketRecovery._pacer": object,  # REPAIR packets are paced by the path's pacer
    "QuicPacketRecovery._cc": object,  # set_max_datagram_size moves it to the path's PMTU
    "QuicPacketPacer._max_datagram_size": int,  # likewise (its burst and packet time)
    "RenoCongestionControl._max_datagram_size": int,  # window floor and growth per datagram
    "CubicCongestionControl._max_datagram_size": int,
    "CubicCongestionControl.additive_increase_factor": int,
    "QuicPacketRecovery._rtt_latest": float,  # the silence rule's time threshold
    "QuicPacketRecovery._rtt_min": float,  # the scheduler's RTT of an idle path
    # probe_cap: the PTO is measured from the last ack-eliciting packet sent
    "QuicPacketRecovery._time_of_last_sent_ack_eliciting_packet": float,
    "QuicStreamSender._buffer_start": int,  # urgent copies never reach below it
    "QuicStreamSender._pending": RangeSet,  # urgent copies: queued for one flush only
    "QuicStreamSender._acked": RangeSet,  # a copied range's loss re-queues only the rest
    "QuicStreamSender._acked_fin": bool,
    "QuicStreamSender._stream_id": int,  # urgent copies: the stream a sent packet carried
    "QuicPacketRecovery.spaces": list,  # a new path's recovery gets its one space
    "QuicPacketRecovery.handshake_confirmed": bool,  # or a new path's PTO never arms
    "QuicPacketRecovery.max_ack_delay": float,
    "QuicPacketSpace.ack_queue": object,
    "QuicPacketSpace.ack_at": (float, NoneType),
    "QuicPacketSpace.largest_received_packet": int,
    "QuicPacketSpace.largest_received_time": (float, NoneType),
    "QuicPacketSpace.sent_packets": dict,
    "QuicNetworkPath.is_validated": bool,
    "QuicNetworkPath.local_challenge_sent": bool,
    "QuicNetworkPath.validation_deadline": (float, NoneType),
    "QuicNetworkPath.bytes_received": int,  # a server's PATH_CHALLENGE to a moved client
    "QuicNetworkPath.bytes_sent": int,  # stays within 3x what came (anti-amplification)
    "CryptoPair._update_key_requested": bool,  # PathCrypto performs requested key updates
    "CryptoPair.recv": CryptoContext,
    "CryptoPair.send": CryptoContext,
    "CryptoContext.aead": object,
    "CryptoContext.hp": object,
}

# The public API of aioquic's CryptoPair that its connection uses on 1-RTT keys:
# PathCrypto stands in for it. (setup_initial only ever serves Initial keys.)
CRYPTO_PAIR_API: Final = frozenset(
    {"aead_tag_size", "decrypt_packet", "encrypt_packet", "key_phase", "recv", "send"}
    | {"teardown", "update_key"}
)

# sha256 (first 16 hex digits) of inspect.getsource() of every aioquic function
# whose behaviour we rely on, and what to re-check in our code when it changes.
SOURCE_HASHES: Final[dict[str, tuple[str, str]]] = {
    "aioquic.quic.connection:QuicConnection.reset_stream": (
        "f5a5e1ff5935b8a1",
        "NetSchedConnection resets a stream whose deadline passed with data queued "
        "(send_order.py); it must stay a no-op on a finished stream",
    ),
    "aioquic.quic.connection:QuicConnection.__init__": (
        "81aea715e34447e1",
        "creates every PATH_ATTRIBUTES entry and the frame table; MultipathConnection "
        "rebuilds _loss as CountingRecovery with the same arguments (_new_recovery), and "
        "with a CID factory replaces the server's first CID (host_cid, "
        "_local_initial_source_connection_id): nothing else may have copied it",
    ),
    "aioquic.quic.connection:QuicConnection.datagrams_to_send": (
        "f4eb22c8add260fe",
        "one builder per call on _network_paths[0] with _packet_number, _peer_cid, _cryptos: "
        "sending on path N swaps those in; any new per-path state goes in PATH_ATTRIBUTES",
    ),
    "aioquic.quic.connection:QuicConnection.receive_datagram": (
        "3c7f29826050cbfe",
        "finds CIDs, network path, keys and space in PATH_ATTRIBUTES state: we route by "
        "DCID and swap the path in first; any new per-path state goes in PATH_ATTRIBUTES",
    ),
    "aioquic.quic.connection:QuicConnection.get_timer": (
        "07184a05f894e968",
        "side effect: sets the live path's _loss_at/_pacing_at; we call it per path, and "
        "before each path's handle_timer",
    ),
    "aioquic.quic.connection:QuicConnection.handle_timer": (
        "8ebd76a179bf5e25",
        "idle/close timers, then the live path's loss and pacing timers: we run it once per "
        "path, path 0 first, and stop once the connection ends",
    ),
    "aioquic.quic.connection:QuicConnection.close": (
        "f24ea1b2912e68d7",
        "we close with NO_VIABLE_PATH when every path is abandoned",
    ),
    "aioquic.quic.connection:QuicConnection._write_application": (
        "c37bf64378f72b2f",
        "calls _write_ack_frame and, once per 1-RTT packet after the handshake, "
        "_write_connection_limits (our multipath frames ride there); reads _streams_queue "
        "and _datagrams_pending, which a backup path empties while it sends; writes the "
        "PATH_CHALLENGE of an unvalidated active path (after the ACK, congestion limited) "
        "unless local_challenge_sent: _challenge_new_address sends it first when the window "
        "has less than a datagram of room",
    ),
    "aioquic.quic.recovery:QuicPacketRecovery.get_loss_detection_time": (
        "de155cb9bef95f8e",
        "CountingRecovery caps the PTO's backoff of a stalled path (probe_cap): the PTO "
        "must still be _time_of_last_sent_ack_eliciting_packet + backed-off timeout, and "
        "_get_loss_space() non-None must still mean the loss timer",
    ),
    "aioquic.quic.recovery:QuicPacketRecovery._get_loss_space": (
        "3b10f42fefbdb4e7",
        "tells the loss timer from the PTO for probe_cap",
    ),
    "aioquic.quic.recovery:QuicPacketRecovery.congestion_window": (
        "709ab500808b130d",
        "CountingRecovery's override clamps it for one flush (window_budget): "
        "datagrams_to_send must read the window through this property",
    ),
    "aioquic.quic.recovery:QuicPacketRecovery.bytes_in_flight": (
        "d32263e3cf4de519",
        "the scheduler's view of a path (and window_budget's base)",
    ),
    "aioquic.quic.connection:QuicConnection._write_ack_frame": (
        "dc0bde63adda7ae4",
        "path 0 uses it as is; path N writes PATH_ACK the same way (ack delay, "
        "_on_ack_delivery arguments, ack_at): mirror any change",
    ),
    "aioquic.quic.connection:QuicConnection._write_connection_limits": (
        "02c42c5455ae1a31",
        "our hook for multipath frames (PATH_NEW_CONNECTION_ID, PATH_ABANDON...)",
    ),
    "aioquic.quic.connection:QuicConnection._replenish_connection_ids": (
        "73b127efb89c53a3",
        "we override it to give CIDs not announced yet (was_sent False) our factory's "
        "values: check CIDs are still announced (and ConnectionIdIssued raised) only later",
    ),
    "aioquic.quic.connection:QuicConnection._write_new_connection_id_frame": (
        "8e58e506ea36e1d1",
        "announces a host CID, marks it was_sent and raises ConnectionIdIssued: our CID "
        "factory rewrites only CIDs not announced yet",
    ),
    "aioquic.quic.connection:QuicConnection._write_path_challenge_frame": (
        "71e5ebefcc602a53",
        "we call it to probe a new path or a moved client (builder, network_path); it sets "
        "local_challenge_sent and starts a frame that asks for 1200-byte padding",
    ),
    "aioquic.quic.connection:QuicConnection._on_path_challenge_delivery": (
        "c3f244b8037e6b1c",
        "a lost challenge to the active path clears local_challenge_sent: "
        "_challenge_new_address then sends a new one",
    ),
    "aioquic.quic.connection:QuicConnection._flush_builder": (
        "ac4bd66d7c3892df",
        "we call it for a new path's PATH_CHALLENGE and for PMTU probes (builder, "
        "network_path, peer_cid, now): it registers the packet with the live path's _loss",
    ),
    "aioquic.quic.connection:QuicConnection._on_ack_delivery": (
        "14648d79ecc50a3d",
        "the delivery handler of our PATH_ACK frames (delivery, space, highest_acked)",
    ),
    "aioquic.quic.connection:QuicConnection._send_probe": (
        "4578820ab6bbd004",
        "every path's recovery gets it as send_probe: it must act on the live path only",
    ),
    "aioquic.quic.connection:QuicConnection._payload_received": (
        "612b67759a96c701",
        "dispatches through self.__frame_handlers (our multipath entries) with their "
        "epochs, and reads the module global NON_ACK_ELICITING_FRAME_TYPES (PATH_ACK added)",
    ),
    "aioquic.quic.connection:QuicConnection._handle_ack_frame": (
        "a9cf2707aa0f99a5",
        "we run it on path 0's state (draft-21: ACK is path 0's): it may touch only state we swap",
    ),
    "aioquic.quic.connection:QuicConnection._handle_new_connection_id_frame": (
        "8a802ee5e62d1e3f",
        "we run it on path 0's state (NEW_CONNECTION_ID is path 0's): it may touch only "
        "state we swap; PATH_NEW_CONNECTION_ID handling mirrors its limits",
    ),
    "aioquic.quic.connection:QuicConnection._handle_retire_connection_id_frame": (
        "4f53abae92fa4017",
        "we run it on path 0's state (RETIRE_CONNECTION_ID is path 0's); "
        "PATH_RETIRE_CONNECTION_ID handling mirrors it",
    ),
    "aioquic.quic.connection:QuicConnection._handle_path_response_frame": (
        "7fbf9c34446cbc95",
        "sets network_path.is_validated, from which _after_receive promotes a VALIDATING path",
    ),
    "aioquic.quic.connection:QuicConnection._abandon_path_validation": (
        "bd71c1680e703738",
        "closes the connection: we let it do so for path 0 alone; path N abandons itself",
    ),
    "aioquic.quic.connection:QuicConnection._idle_timeout": (
        "8549f45b09415b1a",
        "we raise it to 3 x the largest PTO over paths",
    ),
    "aioquic.quic.connection:QuicConnection.change_connection_id": (
        "60bf2f7b2c8600fe",
        "Session.migrate (single path): retires the live path's peer CID and takes the next "
        "unused one (RFC 9000 §9.5)",
    ),
    "aioquic.quic.connection:QuicConnection.send_ping": (
        "db37741af3f6bd5d",
        "Session.migrate: queues a PING, so a packet leaves from the new address at once",
    ),
    "aioquic.quic.connection:QuicConnection._close_end": (
        "7e32d95840a68634",
        "discards every epoch of the live path (path 0 when the connection ends)",
    ),
    "aioquic.quic.connection:QuicConnection._discard_epoch": (
        "124889133f0c2ef0",
        "tears down _cryptos[epoch] (a PathCrypto view of 1-RTT once multipath is on) and "
        "the live path's space",
    ),
    "aioquic.quic.connection:QuicConnection._update_traffic_key": (
        "44917755daf961b0",
        "installs keys in _cryptos[epoch].send/.recv, through PathCrypto's forwarding "
        "properties once multipath is on",
    ),
    "aioquic.quic.connection:QuicConnection._serialize_transport_parameters": (
        "be651f3ddfcd3f39",
        "we append initial_max_path_id and the SLO parameter to its bytes",
    ),
    "aioquic.quic.connection:QuicConnection._parse_transport_parameters": (
        "0da95a03bd5bf00b",
        "we call it first, then scan the same bytes for our parameters (and skip them "
        "from_session_ticket)",
    ),
    "aioquic.quic.connection:QuicConnectionId": (
        "9257a29a172b3517",
        "we build path N's CIDs (cid, sequence_number, stateless_reset_token, was_sent)",
    ),
    "aioquic.quic.connection:QuicNetworkPath.__init__": (
        "e94ef816464a9e37",
        "a new path's 4-tuple is QuicNetworkPath(addr), validated like a migration",
    ),
    "aioquic.quic.packet_builder:QuicPacketBuilder.__init__": (
        "b321fb4eb8ac7b33",
        "_one_rtt_builder builds one (PATH_CHALLENGE, PMTU probes) with the keyword arguments "
        "datagrams_to_send uses",
    ),
    "aioquic.quic.crypto:CryptoContext.__init__": (
        "6d8315edce667112",
        "KeyHistory keeps the previous receive keys in a bare CryptoContext (aead, hp)",
    ),
    "aioquic.quic.crypto:CryptoContext.decrypt_packet": (
        "fe94c52f762d3f3d",
        "PathCrypto.decrypt_packet re-implements it with the path's nonce: port the change",
    ),
    "aioquic.quic.crypto:CryptoContext.encrypt_packet": (
        "fe4c0f9b61d15b01",
        "PathCrypto.encrypt_packet re-implements it with the path's nonce: port the change",
    ),
    "aioquic.quic.crypto:CryptoPair.decrypt_packet": (
        "2d2c3a3bf1295a27",
        "PathCrypto.decrypt_packet mirrors its key update on a new key phase",
    ),
    "aioquic.quic.crypto:CryptoPair.encrypt_packet": (
        "f244294823e49235",
        "PathCrypto.encrypt_packet mirrors its requested (local) key update",
    ),
    "aioquic.quic.crypto:CryptoPair.key_phase": (
        "e7a3f87d62e7b134",
        "PathCrypto.key_phase forwards to it",
    ),
    "aioquic.quic.crypto:CryptoPair._update_key": (
        "4dddcfabc63559ee",
        "PathCrypto calls it for local and remote key updates (shared by all paths)",
    ),
    "aioquic.quic.crypto:next_key_phase": (
        "92c61aab180e0f29",
        "PathCrypto derives the next key phase's receive keys with it",
    ),
    "aioquic._crypto:AEAD.encrypt": (
        "dcd48e4cec215a20",
        "the multipath nonce needs nonce = iv XOR packet_number on all 96 bits: PathCrypto "
        "passes pn | path_id << 64 as the packet number",
    ),
    "aioquic._crypto:AEAD.decrypt": (
        "3cb5f698b2ee2dc4",
        "as AEAD.encrypt: the packet number argument must reach _nonce unchanged",
    ),
    "aioquic._crypto:AEAD._nonce": (
        "cdb45a754af0032d",
        "must stay iv XOR packet_number over 96 bits, or path N's nonces are wrong",
    ),
    "aioquic._crypto:HeaderProtection.apply": (
        "dfbedf5f0cb7f981",
        "PathCrypto.encrypt_packet calls it (plain_header, protected_payload)",
    ),
    "aioquic._crypto:HeaderProtection.remove": (
        "86c5aacd3c9c1024",
        "PathCrypto.decrypt_packet calls it (packet, encrypted_offset)",
    ),
    "aioquic.quic.packet:decode_packet_number": (
        "4cfc0ae8620a2bb9",
        "PathCrypto.decrypt_packet calls it",
    ),
    "aioquic.quic.packet:is_long_header": (
        "9a3aed702db1a0cf",
        "PathCrypto.decrypt_packet calls it",
    ),
    "aioquic.quic.packet:push_ack_frame": (
        "121c52341e802eac",
        "a PATH_ACK body is a path ID then an ACK body: we call it (buf, rangeset, delay, "
        "capacity)",
    ),
    "aioquic.quic.recovery:QuicPacketRecovery.__init__": (
        "11dd9eddeac78a3a",
        "CountingRecovery and every path's recovery are built with these keyword arguments; "
        "a new path also sets spaces, handshake_confirmed and max_ack_delay",
    ),
    "aioquic.quic.recovery:QuicPacketRecovery._on_packets_lost": (
        "77a0ba7595137455",
        "CountingRecovery overrides it (keyword-only packets, now, space, congestion_event) to "
        "count losses and to take lost PMTU probes out of flight with congestion_event=False",
    ),
    "aioquic.quic.recovery:QuicPacketRecovery.on_ack_received": (
        "1a7c693479084333",
        "we call it for PATH_ACK on the path's own recovery",
    ),
    "aioquic.quic.recovery:QuicPacketRecovery.on_loss_detection_timeout": (
        "50d7fd652fe671d4",
        "CountingRecovery overrides it: afterwards _pto_count counts consecutive PTOs, the "
        "PMTU search's black-hole signal",
    ),
    "aioquic.quic.recovery:QuicPacketPacer.__init__": (
        "82551ac5ee8847dc",
        "keeps the datagram size in _max_datagram_size, which set_max_datagram_size rewrites",
    ),
    "aioquic.quic.congestion.reno:RenoCongestionControl.__init__": (
        "05a863f85d2bb013",
        "keeps the datagram size in _max_datagram_size (window floor, congestion-avoidance "
        "step), which set_max_datagram_size rewrites when the path's PMTU changes",
    ),
    "aioquic.quic.congestion.cubic:CubicCongestionControl.__init__": (
        "5e2437205a0ae340",
        "as Reno, plus additive_increase_factor (one datagram), both rewritten with the PMTU",
    ),
    "aioquic.quic.recovery:QuicPacketRecovery.discard_space": (
        "764ad1d17869fe8c",
        "an abandoned path's space is discarded, then we declare its packets lost ourselves",
    ),
    "aioquic.quic.recovery:QuicPacketRecovery.get_probe_timeout": (
        "782ca5036a10bc2f",
        "the largest PTO over paths sets the idle timeout, closing period and validation deadline",
    ),
    "aioquic.quic.recovery:QuicPacketSpace.__init__": (
        "e6fb34bdf2d5376d",
        "each path has its own 1-RTT space; we read ack_queue, ack_at, largest_received_*, "
        "sent_packets",
    ),
    # FEC (netsched_client.proto.fec_builder / fec_link / connection.py).
    "aioquic.quic.connection:QuicConnection._write_stream_frame": (
        "9bc0be962394a322",
        "we wrap it: a frame written to the builder (its buffer moved) marks the packet "
        "protected when the stream's request wants FEC",
    ),
    "aioquic.quic.packet_builder:QuicPacketBuilder._end_packet": (
        "585948d0382505b3",
        "FecPacketBuilder inserts SOURCE_SYMBOL_ID before it runs: the payload must still sit "
        "unencrypted in _buffer from _packet_start + _header_size to tell(), padding and "
        "encryption must come after, and _datagram_needs_padding must mean 1-RTT padding",
    ),
    "aioquic.quic.packet_builder:QuicPacketBuilder.remaining_buffer_space": (
        "c71888f67588d506",
        "FecPacketBuilder lowers it to keep protected packets within the symbol size",
    ),
    "aioquic.quic.packet_builder:QuicPacketBuilder.remaining_flight_space": (
        "7a29e65594a53fb7",
        "as remaining_buffer_space; frame writers size STREAM frames from it",
    ),
    "aioquic.quic.packet_builder:QuicPacketBuilder.start_packet": (
        "63a59deba3617ddc",
        "ends the previous packet (our _end_packet) first, sets _packet_type, _packet_start, "
        "_header_size: FecPacketBuilder resets its per-packet marks after it; a new "
        "datagram's size is capped by max_total_bytes, which _one_rtt_builder sets before",
    ),
    "aioquic.quic.rangeset:RangeSet.__init__": (
        "442ebd54953d7904",
        "recovered symbol IDs for SYMBOL_ACK are a RangeSet (add, shift, iteration)",
    ),
    "aioquic.quic.recovery:QuicPacketPacer.next_send_time": (
        "292b9964362e62b5",
        "REPAIR packets are paced like _write_application paces: next_send_time, then "
        "update_after_send per packet",
    ),
    "aioquic.quic.recovery:QuicPacketPacer.update_after_send": (
        "45868b0afc098716",
        "see next_send_time",
    ),
    "aioquic.quic.packet_builder:QuicPacketBuilder.start_frame": (
        "53af20167bc2f0e0",
        "reads the module globals NON_ACK_ELICITING_FRAME_TYPES / NON_IN_FLIGHT_FRAME_TYPES "
        "(PATH_ACK added) and takes handler/handler_args",
    ),
}

# Modules that read the frame-type sets we extend with PATH_ACK, each through its
# own module global: a new reader would miss our patch.
FRAME_SET_READERS: Final = {
    "NON_ACK_ELICITING_FRAME_TYPES": {"aioquic.quic.connection", "aioquic.quic.packet_builder"},
    "NON_IN_FLIGHT_FRAME_TYPES": {"aioquic.quic.packet_builder"},
}


def _resolve(qualified: str) -> Any:
    """`module:Class.attribute` -> the object (a property's getter for properties)."""
    module_name, _, path = qualified.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in path.split("."):
        obj = vars(obj)[part] if isinstance(obj, type) else getattr(obj, part)
    return obj.fget if isinstance(obj, property) else obj


def _source_hash(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def connected(tmp_path_factory: pytest.TempPathFactory) -> tuple[QuicConnection, QuicConnection]:
    """A plain aioquic client and server, connected in memory."""
    pair = generate_self_signed(tmp_path_factory.mktemp("contract-tls"))
    client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["x"], server_name="localhost")
    client_cfg.load_verify_locations(str(pair.ca_certificate))
    server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["x"])
    server_cfg.load_cert_chain(pair.certificate, pair.private_key)
    client = QuicConnection(configuration=client_cfg)
    server = QuicConnection(
        configuration=server_cfg,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    memory = MemoryPair(client, server)
    memory.flush()
    assert client._handshake_complete and server._handshake_complete
    return client, server


# -- version ----------------------------------------------------------------------------------


def test_installed_aioquic_is_the_pinned_version() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = [d for d in dependencies if d.replace(" ", "").startswith("aioquic")]
    assert pins == [f"aioquic=={AIOQUIC_VERSION}"], "pin aioquic to exactly one version"
    assert aioquic.__version__ == AIOQUIC_VERSION


# -- attributes -------------------------------------------------------------------------------


def test_every_path_attribute_has_a_recorded_kind() -> None:
    assert len(set(PATH_ATTRIBUTES)) == len(PATH_ATTRIBUTES), "PATH_ATTRIBUTES has duplicates"
    assert set(PATH_ATTRIBUTES) == set(PATH_ATTRIBUTE_KINDS)


@pytest.mark.parametrize("role", ["client", "server"])
def test_swapped_and_read_attributes_are_plain_instance_attributes(
    connected: tuple[QuicConnection, QuicConnection], role: str
) -> None:
    """The swap is setattr/getattr on the instance: a property or slot would break it."""
    conn = connected[0] if role == "client" else connected[1]
    kinds = {**PATH_ATTRIBUTE_KINDS, **CONNECTION_ATTRIBUTE_KINDS}
    wrong = {
        name: type(vars(conn).get(name, "<missing>")).__name__
        for name, kind in kinds.items()
        if name not in vars(conn)
        or hasattr(QuicConnection, name)
        or not isinstance(vars(conn)[name], kind)
    }
    assert not wrong, f"aioquic attributes missing, shadowed or of another type: {wrong}"


def test_per_path_containers_hold_what_we_build(
    connected: tuple[QuicConnection, QuicConnection],
) -> None:
    """`_new_path` builds these containers for path N with the same element types."""
    client = connected[0]
    assert all(isinstance(k, Epoch) for k in client._spaces)
    assert isinstance(client._spaces[Epoch.ONE_RTT], QuicPacketSpace)
    assert isinstance(client._cryptos[Epoch.ONE_RTT], CryptoPair)
    assert all(isinstance(p, QuicNetworkPath) for p in client._network_paths)
    assert all(isinstance(c, QuicConnectionId) for c in client._host_cids)
    assert client.host_cid == client._host_cids[0].cid


def test_foreign_attributes_exist_with_their_kind(
    connected: tuple[QuicConnection, QuicConnection],
) -> None:
    client = connected[0]
    space = client._spaces[Epoch.ONE_RTT]
    samples: dict[str, object] = {
        "QuicPacketRecovery": client._loss,
        "QuicPacketSpace": space,
        "QuicNetworkPath": client._network_paths[0],
        "CryptoPair": client._cryptos[Epoch.ONE_RTT],
        "CryptoContext": client._cryptos[Epoch.ONE_RTT].recv,
        "QuicStreamSender": QuicStreamSender(0, writable=True),
        "QuicPacketPacer": client._loss._pacer,
        "RenoCongestionControl": RenoCongestionControl(max_datagram_size=1200),
        "CubicCongestionControl": CubicCongestionControl(max_datagram_size=1200),
    }
    wrong = {}
    for qualified, kind in FOREIGN_ATTRIBUTE_KINDS.items():
        owner, name = qualified.split(".")
        value = vars(samples[owner]).get(name, KeyError)
        if value is KeyError or not isinstance(value, kind):
            wrong[qualified] = type(value).__name__
    assert not wrong, f"aioquic attributes missing or of another type: {wrong}"


def test_frame_handlers_table_binds_through_self() -> None:
    """aioquic builds its frame table from `self._handle_*`, so it reaches our overrides."""
    conn = NetSchedConnection(configuration=QuicConfiguration(is_client=True), max_path_id=None)
    handlers = conn._QuicConnection__frame_handlers  # type: ignore[attr-defined]
    for frame_type, (handler, epochs) in handlers.items():
        assert isinstance(frame_type, int)
        assert inspect.ismethod(handler) and handler.__self__ is conn
        assert isinstance(epochs, frozenset) and all(isinstance(e, Epoch) for e in epochs)
    overrides = {
        getattr(NetSchedConnection, name)
        for name in vars(QuicConnection)
        if name.startswith("_handle_")
        and getattr(NetSchedConnection, name) is not getattr(QuicConnection, name)
    }
    assert overrides, "expected our class to override some of aioquic's frame handlers"
    assert overrides <= {handler.__func__ for handler, _ in handlers.values()}


# -- methods ----------------------------------------------------------------------------------


def test_relied_functions_are_still_functions() -> None:
    """Each is defined on its class itself (not inherited) and is still a function."""
    wrong = []
    for qualified in SOURCE_HASHES:
        try:
            obj = _resolve(qualified)
        except (KeyError, AttributeError):
            wrong.append(f"{qualified}: missing")
            continue
        if not (inspect.isfunction(obj) or isinstance(obj, type)):
            wrong.append(f"{qualified}: now a {type(obj).__name__}")
    assert not wrong, "\n".join(wrong)


def test_path_crypto_stands_in_for_crypto_pair() -> None:
    pair = CryptoPair()
    public = {n for n in {*dir(pair), *vars(pair)} if not n.startswith("_")}
    assert public == CRYPTO_PAIR_API | {"setup_initial"}, (
        "aioquic's CryptoPair API changed: give PathCrypto the new members "
        "and update CRYPTO_PAIR_API"
    )
    view = PathCrypto(pair, 1)
    assert all(hasattr(view, name) for name in CRYPTO_PAIR_API)


def test_source_hashes() -> None:
    changed = []
    for qualified, (expected, recheck) in SOURCE_HASHES.items():
        try:
            actual = _source_hash(_resolve(qualified))
        except (KeyError, AttributeError):
            actual = "missing"
        if actual != expected:
            changed.append(f"{qualified}: {expected} -> {actual}\n    re-check: {recheck}")
    assert not changed, "aioquic changed code we rely on:\n" + "\n".join(changed)


# -- module globals ---------------------------------------------------------------------------


def test_path_ack_is_in_the_frame_type_sets_aioquic_reads() -> None:
    path_acks = {frames.PATH_ACK, frames.PATH_ACK_ECN}
    for name, readers in FRAME_SET_READERS.items():
        for module_name in readers:
            value = getattr(importlib.import_module(module_name), name)
            assert isinstance(value, frozenset), f"{module_name}.{name}"
            assert QuicFrameType.ACK in value and path_acks <= value, f"{module_name}.{name}"


def test_no_other_aioquic_module_reads_the_frame_type_sets() -> None:
    readers: dict[str, set[str]] = {name: set() for name in FRAME_SET_READERS}
    for module_name, source in _aioquic_sources().items():
        for name in readers:
            if name in source and module_name != "aioquic.quic.packet":  # packet defines them
                readers[name].add(module_name)
    assert readers == FRAME_SET_READERS


# -- completeness: our code uses no aioquic name these lists miss -----------------------------


@dataclass(frozen=True, slots=True)
class Use:
    owner: str  # aioquic class, or "*" for a private name on any aioquic object
    name: str
    where: str


def _our_modules() -> list[ModuleType]:
    names = [
        info.name
        for info in pkgutil.iter_modules(
            multipath_package.__path__, "netsched_client.proto.multipath."
        )
    ]
    fec_modules = [netsched_fec_builder, netsched_fec_link]
    return [netsched_connection, *fec_modules, *(importlib.import_module(name) for name in names)]


def _aioquic_base(cls: object) -> type | None:
    if not isinstance(cls, type):
        return None
    return next((c for c in cls.__mro__ if c.__module__.startswith("aioquic.")), None)


def _is_aioquic_state_class(value: object) -> TypeGuard[type]:
    """An aioquic class whose constructor we call (not an event, error, enum or Buffer)."""
    return (
        isinstance(value, type)
        and value.__module__.startswith(("aioquic.quic.", "aioquic._crypto"))
        and value.__module__ != "aioquic.quic.events"
        and not issubclass(value, (Exception, Enum))
    )


def _is_super_call(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _aioquic_names(
    connected: tuple[QuicConnection, QuicConnection],
) -> tuple[dict[type, set[str]], set[str]]:
    """Names per aioquic class (class and instance), and every private aioquic name."""
    client = connected[0]
    samples: dict[type, object] = {
        QuicConnection: client,
        QuicPacketRecovery: client._loss,
        CryptoPair: client._cryptos[Epoch.ONE_RTT],
        CryptoContext: client._cryptos[Epoch.ONE_RTT].recv,
        QuicPacketSpace: client._spaces[Epoch.ONE_RTT],
        QuicNetworkPath: client._network_paths[0],
    }
    per_class = {cls: set(dir(cls)) | set(vars(obj)) for cls, obj in samples.items()}
    private = {n for names in per_class.values() for n in names if _is_private(n)}
    for source in _aioquic_sources().values():
        private |= set(re.findall(r"self\.(_\w+)\s*[:=]", source))  # instance attributes
    for module in _aioquic_modules():
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__:
                private |= {n for n in dir(value) if _is_private(n)}
    return per_class, private


def _aioquic_modules() -> list[ModuleType]:
    infos = pkgutil.walk_packages(aioquic.__path__, "aioquic.")
    return [importlib.import_module(info.name) for info in infos]


def _aioquic_sources() -> dict[str, str]:
    """Module name -> source, for aioquic's pure-Python modules."""
    specs = [importlib.util.find_spec(module.__name__) for module in _aioquic_modules()]
    return {
        spec.name: Path(spec.origin).read_text()
        for spec in specs
        if spec is not None and spec.origin is not None and spec.origin.endswith(".py")
    }


def _uses(module: ModuleType, per_class: dict[type, set[str]], private: set[str]) -> Iterator[Use]:
    tree = ast.parse(inspect.getsource(module))
    filename = Path(inspect.getfile(module)).name
    for cls_node in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        base = _aioquic_base(getattr(module, cls_node.name, None))
        if base is not None:
            known = per_class.get(base, set(dir(base)))
            yield from _uses_in_subclass(cls_node, base, known, filename)
    yield from _uses_anywhere(tree, module, private, filename)


def _uses_in_subclass(
    cls_node: ast.ClassDef, base: type, known: set[str], filename: str
) -> Iterator[Use]:
    """Overrides, and `self.x` / `super().x` naming something of aioquic's `base`."""
    for statement in cls_node.body:
        if isinstance(statement, ast.FunctionDef) and statement.name in dir(base):
            yield Use(base.__name__, statement.name, f"{filename}:{statement.lineno} (override)")
    for node in ast.walk(cls_node):
        if not isinstance(node, ast.Attribute) or node.attr not in known:
            continue
        if _is_super_call(node.value) or _is_self(node.value):
            yield Use(base.__name__, node.attr, f"{filename}:{node.lineno}")


def _uses_anywhere(
    tree: ast.Module, module: ModuleType, private: set[str], filename: str
) -> Iterator[Use]:
    """aioquic objects we construct, and aioquic private names read on any other object."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            built = getattr(module, node.func.id, None)
            if _is_aioquic_state_class(built):
                yield Use(built.__name__, "__init__", f"{filename}:{node.lineno}")
        if (
            isinstance(node, ast.Attribute)
            and node.attr in private
            and not _is_self(node.value)
            and not _is_super_call(node.value)
        ):
            yield Use("*", node.attr, f"{filename}:{node.lineno}")


def _contract_names() -> dict[str, set[str]]:
    names: dict[str, set[str]] = {
        "QuicConnection": set(PATH_ATTRIBUTES) | set(CONNECTION_ATTRIBUTE_KINDS),
    }
    entries = [q.partition(":")[2] for q in SOURCE_HASHES]
    entries += list(FOREIGN_ATTRIBUTE_KINDS)
    for entry in entries:
        owner, _, name = entry.rpartition(".")
        if not owner:  # a whole class is pinned: its constructor
            owner, name = name, "__init__"
        names.setdefault(owner, set()).add(name)
    names["*"] = {n for group in names.values() for n in group}
    return names


def test_our_code_uses_only_aioquic_names_in_this_contract(
    connected: tuple[QuicConnection, QuicConnection],
) -> None:
    per_class, private = _aioquic_names(connected)
    contract = _contract_names()
    missing: dict[str, str] = {}  # name -> first place we use it
    for module in _our_modules():
        for use in _uses(module, per_class, private):
            if use.name not in contract.get(use.owner, set()):
                missing.setdefault(f"{use.owner}.{use.name}", use.where)
    assert not missing, (
        "our code relies on aioquic names this contract does not pin; add each to "
        "SOURCE_HASHES (methods) or the *_KINDS tables (attributes):\n"
        + "\n".join(f"{name} (first at {where})" for name, where in sorted(missing.items()))
    )


def test_scan_sees_our_known_uses(connected: tuple[QuicConnection, QuicConnection]) -> None:
    """The scan itself works: it finds uses we know of."""
    per_class, private = _aioquic_names(connected)
    found = {(u.owner, u.name) for m in _our_modules() for u in _uses(m, per_class, private)}
    assert ("QuicConnection", "_write_ack_frame") in found  # override
    assert ("QuicConnection", "_QuicConnection__frame_handlers") in found  # self attribute
    assert ("QuicConnection", "_serialize_transport_parameters") in found  # super() call
    assert ("*", "_pto_count") in found  # private attribute of another aioquic object
    assert ("QuicNetworkPath", "__init__") in found  # constructor
