/*
 * Authentication for the shared forkserver: a challenge-response over a
 * shared secret, both ways, on every connection (as CPython's forkserver does
 * since CVE-2022-42919).  Each side sends a fresh random nonce; the other
 * proves it knows the key by returning HMAC-SHA256(key, role || nonce).  The
 * role string keeps a proof from one direction being replayed in the other.
 * The HMAC is sha256.c's, compared in constant time; nonces and keys come
 * from getrandom.
 */
#include "forkserver/auth.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

int tbx__random(void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void tbx__auth_prove(const uint8_t key[TBX__KEY_LEN], const char *role,
                     const uint8_t nonce[TBX__NONCE_LEN], uint8_t out[TBX__PROOF_LEN])
{
    uint8_t msg[64 + TBX__NONCE_LEN];
    size_t rlen = strlen(role);
    memcpy(msg, role, rlen);
    memcpy(msg + rlen, nonce, TBX__NONCE_LEN);
    tbx__hmac_sha256(key, TBX__KEY_LEN, msg, rlen + TBX__NONCE_LEN, out);
}

int tbx__auth_check(const uint8_t key[TBX__KEY_LEN], const char *role,
                    const uint8_t nonce[TBX__NONCE_LEN], const uint8_t proof[TBX__PROOF_LEN])
{
    uint8_t want[TBX__PROOF_LEN];
    tbx__auth_prove(key, role, nonce, want);
    return tbx__equal_ct(want, proof, TBX__PROOF_LEN) ? 0 : TBX_EPROTO;
}

int tbx__key_parse(const char *hex, uint8_t key[TBX__KEY_LEN])
{
    if (hex == NULL || strlen(hex) != 2 * TBX__KEY_LEN)
        return TBX_EINVAL;
    for (size_t i = 0; i < TBX__KEY_LEN; i++) {
        unsigned v = 0;
        for (int j = 0; j < 2; j++) {
            char c = hex[2 * i + (size_t)j];
            unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                         : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                         : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                                : 16u;
            if (d == 16)
                return TBX_EINVAL;
            v = v << 4 | d;
        }
        key[i] = (uint8_t)v;
    }
    return 0;
}

void tbx__key_format(const uint8_t key[TBX__KEY_LEN], char hex[2 * TBX__KEY_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < TBX__KEY_LEN; i++) {
        hex[2 * i] = digits[key[i] >> 4];
        hex[2 * i + 1] = digits[key[i] & 15];
    }
    hex[2 * TBX__KEY_LEN] = '\0';
}
