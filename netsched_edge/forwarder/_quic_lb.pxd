# The QUIC-LB decryption the fleet's front runs per datagram (draft-ietf-quic-load-balancers,
# netsched_client/proto/quic_lb.py is the Python statement): AES-128 with AES-NI, the
# draft's Feistel network, and the rendezvous hash; QuicLbRouter in _relay.pyx uses them.
#
# Why AES-NI intrinsics rather than OpenSSL's EVP: a CID is one AES block (single pass) or
# three (four-pass, server ID in the left half), each a few ns of AES-NI work; three EVP
# calls per datagram would add OpenSSL's per-call dispatch to each, against a budget of
# 10 % of the kernel's ~4 us per datagram, and need libcrypto's headers at build time.
# Measured here: the whole route (parse, three blocks, table) costs ~0.1 us a datagram
# (bench/bench_forwarder.py). The functions carry their own target attribute, so the
# extension is built without -maes and loads anywhere: `ns_aesni_available` says at run
# time whether the CPU has AES-NI, and without it (or off x86-64) the router decrypts
# through quic_lb.py instead (correct, per datagram in Python: slow).

from libc.stdint cimport uint32_t, uint64_t


cdef extern from * nogil:
    """
    #include <stdint.h>
    #include <string.h>

    typedef struct { unsigned char enc[11][16]; unsigned char dec[11][16]; } ns_aes128;

    /* The rendezvous hash (routing.py has the same in Python): 64-bit finaliser of MurmurHash3. */
    static inline uint64_t ns_mix64(uint64_t h) {
        h ^= h >> 33; h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL;
        h ^= h >> 33; return h;
    }
    /* A CID's hash: its 8-byte little-endian words (the last one zero-padded) mixed in turn. */
    static uint64_t ns_cid_hash(const unsigned char *cid, int length, uint64_t seed) {
        uint64_t h = seed ^ (uint64_t)length, word;
        int i, j;
        for (i = 0; i < length; i += 8) {
            word = 0;
            for (j = 0; j < 8 && i + j < length; j++) word |= (uint64_t)cid[i + j] << (8 * j);
            h = ns_mix64(h ^ word);
        }
        return h;
    }
    /* One member's score for a CID: the highest wins (rendezvous hashing). */
    static inline uint64_t ns_host_score(uint64_t cid_hash, uint32_t host) {
        return ns_mix64(cid_hash ^ ((uint64_t)host * 0x9E3779B97F4A7C15ULL));
    }

    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #include <wmmintrin.h>
    #define NS_AESNI __attribute__((target("aes,sse2")))
    static int ns_aesni_available(void) { return __builtin_cpu_supports("aes"); }
    NS_AESNI static inline __m128i ns_expand(__m128i key, __m128i assist) {
        assist = _mm_shuffle_epi32(assist, 0xff);
        key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
        key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
        key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
        return _mm_xor_si128(key, assist);
    }
    /* aeskeygenassist takes its round constant as an immediate: one line per round. */
    #define NS_ROUND(i, rcon) \
        rk[i] = ns_expand(rk[i - 1], _mm_aeskeygenassist_si128(rk[i - 1], rcon))
    NS_AESNI static void ns_aes128_setup(ns_aes128 *k, const unsigned char *key) {
        __m128i rk[11];
        int i;
        rk[0] = _mm_loadu_si128((const __m128i *)key);
        NS_ROUND(1, 0x01); NS_ROUND(2, 0x02); NS_ROUND(3, 0x04); NS_ROUND(4, 0x08);
        NS_ROUND(5, 0x10); NS_ROUND(6, 0x20); NS_ROUND(7, 0x40); NS_ROUND(8, 0x80);
        NS_ROUND(9, 0x1b); NS_ROUND(10, 0x36);
        for (i = 0; i < 11; i++) {
            _mm_storeu_si128((__m128i *)k->enc[i], rk[i]);
            /* The equivalent inverse cipher: reversed keys, InvMixColumns on the middle ones. */
            _mm_storeu_si128((__m128i *)k->dec[i],
                             (i == 0 || i == 10) ? rk[10 - i] : _mm_aesimc_si128(rk[10 - i]));
        }
    }
    #undef NS_ROUND
    NS_AESNI static void ns_aes128_encrypt(const ns_aes128 *k, const unsigned char *in,
                                           unsigned char *out) {
        __m128i b = _mm_xor_si128(_mm_loadu_si128((const __m128i *)in),
                                  _mm_loadu_si128((const __m128i *)k->enc[0]));
        int i;
        for (i = 1; i < 10; i++) b = _mm_aesenc_si128(b, _mm_loadu_si128((const __m128i *)k->enc[i]));
        b = _mm_aesenclast_si128(b, _mm_loadu_si128((const __m128i *)k->enc[10]));
        _mm_storeu_si128((__m128i *)out, b);
    }
    NS_AESNI static void ns_aes128_decrypt(const ns_aes128 *k, const unsigned char *in,
                                           unsigned char *out) {
        __m128i b = _mm_xor_si128(_mm_loadu_si128((const __m128i *)in),
                                  _mm_loadu_si128((const __m128i *)k->dec[0]));
        int i;
        for (i = 1; i < 10; i++) b = _mm_aesdec_si128(b, _mm_loadu_si128((const __m128i *)k->dec[i]));
        b = _mm_aesdeclast_si128(b, _mm_loadu_si128((const __m128i *)k->dec[10]));
        _mm_storeu_si128((__m128i *)out, b);
    }
    #else
    /* No AES-NI here: never called, the router decodes through quic_lb.py. */
    static int ns_aesni_available(void) { return 0; }
    static void ns_aes128_setup(ns_aes128 *k, const unsigned char *key) { (void)k; (void)key; }
    static void ns_aes128_encrypt(const ns_aes128 *k, const unsigned char *in, unsigned char *out) {
        (void)k; (void)in; memset(out, 0, 16);
    }
    static void ns_aes128_decrypt(const ns_aes128 *k, const unsigned char *in, unsigned char *out) {
        (void)k; (void)in; memset(out, 0, 16);
    }
    #endif

    /* The plaintext of a `length`-byte encrypted block (the CID after its first octet):
       single pass for 16 bytes; else the four-pass Feistel network run back `rounds`
       passes (3 leave only the left half right: enough when the server ID fits in it). */
    static void ns_quic_lb_open(const ns_aes128 *k, const unsigned char *block, int length,
                                int rounds, unsigned char *out) {
        unsigned char left[16], right[16], expanded[16], pad[16];
        unsigned char *target;
        const unsigned char *source;
        int half = (length + 1) / 2, odd = length & 1, i, j, pass;
        if (length == 16) { ns_aes128_decrypt(k, block, out); return; }
        memcpy(left, block, half);
        memcpy(right, block + length - half, half);
        if (odd) { left[half - 1] &= 0xF0; right[0] &= 0x0F; }  /* the split middle octet */
        for (i = 0; i < rounds; i++) {
            pass = 4 - i;  /* an odd pass mixes the left half into the right, an even one back */
            target = (pass & 1) ? right : left;
            source = (pass & 1) ? left : right;
            memset(expanded, 0, 16);
            memcpy(expanded, source, half);
            expanded[14] = (unsigned char)length;
            expanded[15] = (unsigned char)pass;
            ns_aes128_encrypt(k, expanded, pad);
            for (j = 0; j < half; j++) target[j] ^= pad[j];
            if (odd) { if (pass & 1) right[0] &= 0x0F; else left[half - 1] &= 0xF0; }
        }
        if (odd) {
            memcpy(out, left, half - 1);
            out[half - 1] = left[half - 1] | right[0];
            memcpy(out + half, right + 1, half - 1);
        } else {
            memcpy(out, left, half);
            memcpy(out + half, right, half);
        }
    }
    """
    ctypedef struct ns_aes128:
        pass

    uint64_t ns_cid_hash(const unsigned char *cid, int length, uint64_t seed)
    uint64_t ns_host_score(uint64_t cid_hash, uint32_t host)
    int ns_aesni_available()
    void ns_aes128_setup(ns_aes128 *k, const unsigned char *key)
    void ns_quic_lb_open(const ns_aes128 *k, const unsigned char *block, int length, int rounds,
                         unsigned char *out)
