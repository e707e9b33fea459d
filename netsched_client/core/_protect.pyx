# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False
# distutils: libraries = crypto
"""Packet protection in C over OpenSSL's libcrypto (EVP): AEAD and header protection.

Each `PacketProtection` keeps its EVP contexts keyed once; a packet costs
one nonce set, one AAD and one payload pass, one header-protection block,
and one bytes object for the result. `_protect_py.py` is the pure-Python
reference over `cryptography` (tests run both and compare).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy

from netsched_client.core._packet cimport decode_pn

from netsched_client.core.errors import CryptoError, PacketError

cdef extern from "openssl/evp.h":
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct ENGINE:
        pass
    int EVP_CTRL_AEAD_SET_IVLEN
    int EVP_CTRL_AEAD_GET_TAG
    int EVP_CTRL_AEAD_SET_TAG
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
    int EVP_CIPHER_CTX_set_padding(EVP_CIPHER_CTX *ctx, int pad)
    const EVP_CIPHER *EVP_aes_128_gcm()
    const EVP_CIPHER *EVP_aes_256_gcm()
    const EVP_CIPHER *EVP_chacha20_poly1305()
    const EVP_CIPHER *EVP_aes_128_ecb()
    const EVP_CIPHER *EVP_aes_256_ecb()
    const EVP_CIPHER *EVP_chacha20()
    int EVP_CipherInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, ENGINE *impl,
                          const unsigned char *key, const unsigned char *iv, int enc) nogil
    int EVP_CipherUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                         const unsigned char *inp, int inl) nogil
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl) nogil

TAG_LENGTH = 16
SAMPLE_LENGTH = 16
CIPHERS = ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305")

cdef enum:
    C_TAG = 16
    C_SAMPLE = 16
    C_IV = 12
    C_HEADER_MAX = 512   # headers longer than this (Initial tokens) take the heap

cdef int64_t C_MAX_PN = ((<int64_t>1) << 62) - 1
cdef uint64_t C_MAX_PATH_ID = 0xFFFFFFFF


cdef class PacketProtection:
    """One direction's packet protection: an AEAD with its key and IV, and a header protection key.

    `seal` protects a packet, `open` removes the protection of a received one.
    The AEAD nonce is the IV XOR (path ID (32 bits) || packet number (64
    bits)), draft-ietf-quic-multipath-21 §2.4: path 0 (and single-path QUIC)
    gives RFC 9001's nonce.
    """

    cdef EVP_CIPHER_CTX *seal_ctx
    cdef EVP_CIPHER_CTX *open_ctx
    cdef EVP_CIPHER_CTX *hp_ctx
    cdef uint8_t iv[C_IV]
    cdef uint8_t hp_key[32]
    cdef bint chacha
    cdef str _cipher

    def __cinit__(self, str cipher, key, iv, hp_key):
        cdef const EVP_CIPHER *aead
        cdef const EVP_CIPHER *hp
        cdef Py_ssize_t size
        if cipher == "aes-128-gcm":
            aead, hp, size = EVP_aes_128_gcm(), EVP_aes_128_ecb(), 16
        elif cipher == "aes-256-gcm":
            aead, hp, size = EVP_aes_256_gcm(), EVP_aes_256_ecb(), 32
        elif cipher == "chacha20-poly1305":
            aead, hp, size = EVP_chacha20_poly1305(), EVP_chacha20(), 32
        else:
            raise PacketError(f"cipher {cipher!r}")
        cdef bytes k = bytes(key), i = bytes(iv), h = bytes(hp_key)
        if len(k) != size or len(h) != size or len(i) != C_IV:
            raise PacketError(f"{cipher}: key, IV or header protection key of the wrong length")
        self._cipher = cipher
        self.chacha = cipher == "chacha20-poly1305"
        memcpy(self.iv, <char *>i, C_IV)
        memcpy(self.hp_key, <char *>h, size)
        self.seal_ctx = EVP_CIPHER_CTX_new()
        self.open_ctx = EVP_CIPHER_CTX_new()
        self.hp_ctx = EVP_CIPHER_CTX_new()
        if self.seal_ctx == NULL or self.open_ctx == NULL or self.hp_ctx == NULL:
            raise MemoryError()
        if (EVP_CipherInit_ex(self.seal_ctx, aead, NULL, <uint8_t *>(<char *>k), NULL, 1) != 1
                or EVP_CipherInit_ex(self.open_ctx, aead, NULL, <uint8_t *>(<char *>k), NULL, 0) != 1
                or EVP_CipherInit_ex(self.hp_ctx, hp, NULL,
                                     self.hp_key, NULL, 1) != 1):
            raise CryptoError(f"{cipher}: OpenSSL refused the key")
        if not self.chacha:
            EVP_CIPHER_CTX_set_padding(self.hp_ctx, 0)

    def __dealloc__(self):
        EVP_CIPHER_CTX_free(self.seal_ctx)
        EVP_CIPHER_CTX_free(self.open_ctx)
        EVP_CIPHER_CTX_free(self.hp_ctx)

    @property
    def cipher(self):
        return self._cipher

    cdef int _mask(self, const uint8_t *sample, uint8_t *mask) except -1:
        cdef int n = 0
        cdef uint8_t block[C_SAMPLE]
        cdef uint8_t zeros[5]
        if self.chacha:
            zeros[:] = [0, 0, 0, 0, 0]
            if (EVP_CipherInit_ex(self.hp_ctx, NULL, NULL, NULL, sample, 1) != 1
                    or EVP_CipherUpdate(self.hp_ctx, mask, &n, zeros, 5) != 1):
                raise CryptoError("header protection failed")
            return 0
        if EVP_CipherUpdate(self.hp_ctx, block, &n, sample, C_SAMPLE) != 1 or n != C_SAMPLE:
            raise CryptoError("header protection failed")
        memcpy(mask, block, 5)
        return 0

    cdef inline void _nonce(self, uint8_t *nonce, uint64_t pn, uint64_t path_id) noexcept nogil:
        cdef int i
        memcpy(nonce, self.iv, C_IV)
        for i in range(4):
            nonce[i] ^= <uint8_t>(path_id >> (24 - 8 * i))
        for i in range(8):
            nonce[4 + i] ^= <uint8_t>(pn >> (56 - 8 * i))

    def seal(self, header, payload, packet_number, path_id=0):
        """The protected packet: `header` (unprotected, ending with the truncated packet
        number whose length its first byte gives) and `payload` encrypted, tag appended.

        The payload must hold at least 4 - (packet number length) bytes, so the
        header protection sample fits (RFC 9001 §5.4.2); the caller pads.
        """
        if not 0 <= packet_number <= C_MAX_PN or not 0 <= path_id <= C_MAX_PATH_ID:
            raise PacketError(f"packet number {packet_number}, path ID {path_id}")
        cdef Py_buffer hv, pv
        PyObject_GetBuffer(header, &hv, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(payload, &pv, PyBUF_SIMPLE)
            try:
                return self._seal(<const uint8_t *>hv.buf, hv.len, <const uint8_t *>pv.buf,
                                  pv.len, packet_number, path_id)
            finally:
                PyBuffer_Release(&pv)
        finally:
            PyBuffer_Release(&hv)

    cdef bytes _seal(self, const uint8_t *header, Py_ssize_t hlen, const uint8_t *payload,
                     Py_ssize_t plen, uint64_t pn, uint64_t path_id):
        if hlen < 1:
            raise PacketError("seal: empty header")
        cdef int pn_length = (header[0] & 3) + 1
        cdef Py_ssize_t pn_offset = hlen - pn_length
        if pn_offset < 1:
            raise PacketError("seal: header shorter than its packet number")
        if pn_length + plen < 4:
            raise PacketError("seal: payload too short to sample")
        if hlen + plen + C_TAG > 0x7FFFFFFF:
            raise PacketError("seal: packet too long")
        cdef uint8_t nonce[C_IV]
        cdef uint8_t mask[5]
        cdef int n = 0, i
        out = PyBytes_FromStringAndSize(NULL, hlen + plen + C_TAG)
        cdef uint8_t *p = <uint8_t *>PyBytes_AS_STRING(out)
        memcpy(p, header, hlen)
        self._nonce(nonce, pn, path_id)
        if (EVP_CipherInit_ex(self.seal_ctx, NULL, NULL, NULL, nonce, 1) != 1
                or EVP_CipherUpdate(self.seal_ctx, NULL, &n, header, <int>hlen) != 1
                or EVP_CipherUpdate(self.seal_ctx, p + hlen, &n, payload, <int>plen) != 1
                or EVP_CipherFinal_ex(self.seal_ctx, p + hlen + n, &n) != 1
                or EVP_CIPHER_CTX_ctrl(self.seal_ctx, EVP_CTRL_AEAD_GET_TAG, C_TAG,
                                       p + hlen + plen) != 1):
            raise CryptoError("seal: encryption failed")
        self._mask(p + pn_offset + 4, mask)
        p[0] ^= mask[0] & (0x0F if p[0] & 0x80 else 0x1F)
        for i in range(pn_length):
            p[pn_offset + i] ^= mask[1 + i]
        return out

    def open(self, packet, Py_ssize_t pn_offset, largest_pn, path_id=0):
        """(first byte unprotected, full packet number, plaintext) of one protected packet.

        `pn_offset` comes from the packet's record (F_PN_OFFSET, relative to the
        packet); `largest_pn` is the largest packet number received in its space
        (-1: none). CryptoError when it does not authenticate or is too short.
        """
        if not 0 <= path_id <= C_MAX_PATH_ID:
            raise PacketError(f"path ID {path_id}")
        if not -1 <= largest_pn <= C_MAX_PN:
            raise PacketError(f"largest packet number {largest_pn}")
        cdef Py_buffer view
        PyObject_GetBuffer(packet, &view, PyBUF_SIMPLE)
        try:
            return self._open(<const uint8_t *>view.buf, view.len, pn_offset, largest_pn, path_id)
        finally:
            PyBuffer_Release(&view)

    cdef tuple _open(self, const uint8_t *data, Py_ssize_t size, Py_ssize_t pn_offset,
                     int64_t largest_pn, uint64_t path_id):
        if pn_offset < 1 or pn_offset + 4 + C_SAMPLE > size:
            raise CryptoError("open: packet too short to sample")
        if size > 0x7FFFFFFF:
            raise PacketError("open: packet too long")
        cdef uint8_t mask[5]
        cdef uint8_t nonce[C_IV]
        cdef uint8_t stack[C_HEADER_MAX]
        cdef uint8_t *header = stack
        cdef int pn_length, i, n = 0, ok
        cdef uint64_t truncated = 0
        cdef int64_t pn
        cdef Py_ssize_t hlen, clen
        self._mask(data + pn_offset + 4, mask)
        cdef uint8_t first = data[0] ^ (mask[0] & (0x0F if data[0] & 0x80 else 0x1F))
        pn_length = (first & 3) + 1
        hlen = pn_offset + pn_length
        clen = size - hlen - C_TAG
        if hlen > C_HEADER_MAX:
            header = <uint8_t *>PyMem_Malloc(hlen)
            if header == NULL:
                raise MemoryError()
        try:
            memcpy(header, data, hlen)
            header[0] = first
            for i in range(pn_length):
                header[pn_offset + i] ^= mask[1 + i]
                truncated = truncated << 8 | header[pn_offset + i]
            pn = decode_pn(truncated, pn_length, largest_pn)
            if pn > C_MAX_PN:
                raise PacketError(f"packet number {pn}, path ID {path_id}")
            self._nonce(nonce, <uint64_t>pn, path_id)
            out = PyBytes_FromStringAndSize(NULL, clen)
            ok = (EVP_CipherInit_ex(self.open_ctx, NULL, NULL, NULL, nonce, 0) == 1
                  and EVP_CipherUpdate(self.open_ctx, NULL, &n, header, <int>hlen) == 1
                  and EVP_CipherUpdate(self.open_ctx, <uint8_t *>PyBytes_AS_STRING(out), &n,
                                       data + hlen, <int>clen) == 1
                  and EVP_CIPHER_CTX_ctrl(self.open_ctx, EVP_CTRL_AEAD_SET_TAG, C_TAG,
                                          <void *>(data + size - C_TAG)) == 1
                  and EVP_CipherFinal_ex(self.open_ctx,
                                         <uint8_t *>PyBytes_AS_STRING(out) + n, &n) == 1)
        finally:
            if header != stack:
                PyMem_Free(header)
        if not ok:
            raise CryptoError("open: authentication failed")
        return first, pn, out
