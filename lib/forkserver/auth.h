/*
 * The forkserver's authentication: a process that connects to a listening
 * forkserver proves, and is proved, knowledge of the shared key.  Used by
 * both the client (unixsock.c) and the server (server_clients.c).
 */
#ifndef TBX_FORKSERVER_AUTH_H
#define TBX_FORKSERVER_AUTH_H

#include "../wire.h"

/* ------------------------------------------------------ the shared server
 * A process that connects to a listening forkserver proves, and is proved,
 * knowledge of the shared key (auth.c) before its first call:
 *   server -> client  tbx__challenge   {magic, nonce_s}
 *   client -> server  tbx__response    {magic, proof(key, "client", nonce_s), nonce_c}
 *   server -> client  tbx__proof       {magic, proof(key, "server", nonce_c)}
 * Each is one SEQPACKET message; then the connection carries calls as the
 * creator's does. */
#define TBX__KEY_LEN 32
#define TBX__NONCE_LEN 32
#define TBX__PROOF_LEN 32
#define TBX__AUTH_MAGIC 0x41584254u /* "TBXA" */

typedef struct tbx__challenge {
    uint32_t magic;
    uint8_t nonce[TBX__NONCE_LEN];
} tbx__challenge;

typedef struct tbx__response {
    uint32_t magic;
    uint8_t proof[TBX__PROOF_LEN];
    uint8_t nonce[TBX__NONCE_LEN];
} tbx__response;

typedef struct tbx__proof {
    uint32_t magic;
    uint8_t proof[TBX__PROOF_LEN];
} tbx__proof;

/* The first message on a creator's connection: the key. */
typedef struct tbx__keymsg {
    uint32_t magic;
    uint8_t key[TBX__KEY_LEN];
} tbx__keymsg;

int tbx__random(void *buf, size_t len);
/* sha256.c: HMAC-SHA256 of msg under key (RFC 2104), and 1 if a and b hold
 * the same n bytes, in time that does not depend on where they differ. */
void tbx__hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                      uint8_t out[32]);
int tbx__equal_ct(const void *a, const void *b, size_t n);
void tbx__auth_prove(const uint8_t key[TBX__KEY_LEN], const char *role,
                     const uint8_t nonce[TBX__NONCE_LEN], uint8_t out[TBX__PROOF_LEN]);
/* 0 if proof is role's proof for nonce under key, compared in constant
 * time; TBX_EPROTO otherwise. */
int tbx__auth_check(const uint8_t key[TBX__KEY_LEN], const char *role,
                    const uint8_t nonce[TBX__NONCE_LEN], const uint8_t proof[TBX__PROOF_LEN]);
int tbx__key_parse(const char *hex, uint8_t key[TBX__KEY_LEN]);
void tbx__key_format(const uint8_t key[TBX__KEY_LEN], char hex[2 * TBX__KEY_LEN + 1]);

#endif /* TBX_FORKSERVER_AUTH_H */
