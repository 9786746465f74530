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

/* auth.c.  random: len bytes from getrandom (keys).  The rest is
 * libsodium's, loaded on first use; each returns -ELIBACC when it cannot be.
 * nonce: a fresh handshake nonce.  hmac_sha256: HMAC-SHA256 of msg under key
 * (any length, RFC 2104).  prove: role's proof for nonce under key.  check:
 * 0 if proof is role's proof for nonce under key, compared in constant time;
 * TBX_EPROTO otherwise. */
int tbx__random(void *buf, size_t len);
int tbx__auth_nonce(uint8_t nonce[TBX__NONCE_LEN]);
int tbx__hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                     uint8_t out[32]);
int tbx__auth_prove(const uint8_t key[TBX__KEY_LEN], const char *role,
                    const uint8_t nonce[TBX__NONCE_LEN], uint8_t out[TBX__PROOF_LEN]);
int tbx__auth_check(const uint8_t key[TBX__KEY_LEN], const char *role,
                    const uint8_t nonce[TBX__NONCE_LEN], const uint8_t proof[TBX__PROOF_LEN]);
int tbx__key_parse(const char *hex, uint8_t key[TBX__KEY_LEN]);
void tbx__key_format(const uint8_t key[TBX__KEY_LEN], char hex[2 * TBX__KEY_LEN + 1]);
/* A key file: 64 hex digits and a newline.  read: private_only also wants a
 * regular file of ours that no one else may read (-EPERM otherwise).  write:
 * mode 0600 from birth, never over an existing file (-EEXIST).  0, -errno
 * or TBX_EINVAL (not a key). */
int tbx__key_read(const char *file, uint8_t key[TBX__KEY_LEN], int private_only);
int tbx__key_write(const char *file, const uint8_t key[TBX__KEY_LEN]);

#endif /* TBX_FORKSERVER_AUTH_H */
