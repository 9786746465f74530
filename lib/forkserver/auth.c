/*
 * Authentication for the shared forkserver: a challenge-response over a
 * shared secret, both ways, on every connection (as CPython's forkserver does
 * since CVE-2022-42919).  Each side sends a fresh random nonce; the other
 * proves it knows the key by returning HMAC-SHA256(key, role || nonce).  The
 * role string keeps a proof from one direction being replayed in the other.
 *
 * The HMAC, the constant-time compare and the nonces are libsodium's.  It is
 * loaded with dlopen on first use, not linked: every spawned worker loads
 * libtimebox, and only the processes that use a shared socket should pay for
 * loading libsodium (about 0.1 ms of a spawn).  Keys come from getrandom, as
 * libsodium's own would, so that starting a private forkserver loads nothing.
 */
#include "forkserver/auth.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* The soname of the libsodium ABI these prototypes are from (Debian's
 * libsodium23); the runtime package depends on it. */
#define SODIUM_SONAME "libsodium.so.23"

static struct {
    __typeof__(crypto_auth_hmacsha256_init) *hmac_init;
    __typeof__(crypto_auth_hmacsha256_update) *hmac_update;
    __typeof__(crypto_auth_hmacsha256_final) *hmac_final;
    __typeof__(sodium_memcmp) *memcmp_ct;
    __typeof__(randombytes_buf) *random;
    int rc; /* 0 once loaded, or why it cannot be */
} sodium;
static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;

static void sodium_load(void)
{
    /* RTLD_LOCAL: its names stay out of the program's namespace. */
    void *h = dlopen(SODIUM_SONAME, RTLD_NOW | RTLD_LOCAL);
    int (*init)(void) = h != NULL ? (int (*)(void))dlsym(h, "sodium_init") : NULL;
    if (h != NULL) {
        sodium.hmac_init = (__typeof__(sodium.hmac_init))dlsym(h, "crypto_auth_hmacsha256_init");
        sodium.hmac_update =
            (__typeof__(sodium.hmac_update))dlsym(h, "crypto_auth_hmacsha256_update");
        sodium.hmac_final = (__typeof__(sodium.hmac_final))dlsym(h, "crypto_auth_hmacsha256_final");
        sodium.memcmp_ct = (__typeof__(sodium.memcmp_ct))dlsym(h, "sodium_memcmp");
        sodium.random = (__typeof__(sodium.random))dlsym(h, "randombytes_buf");
    }
    if (init == NULL || sodium.hmac_init == NULL || sodium.hmac_update == NULL ||
        sodium.hmac_final == NULL || sodium.memcmp_ct == NULL || sodium.random == NULL) {
        tbx__log(TBX_LOG_ERROR, "cannot load %s for the shared forkserver's handshake: %s",
                 SODIUM_SONAME, h == NULL ? dlerror() : "a symbol is missing");
        sodium.rc = -ELIBACC;
        return;
    }
    /* 0: initialised now, 1: already; -1: no entropy source. */
    sodium.rc = init() < 0 ? -ELIBACC : 0;
}

/* 0 once libsodium is usable in this process, or -ELIBACC. */
static int sodium_ready(void)
{
    pthread_once(&sodium_once, sodium_load);
    return sodium.rc;
}

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

int tbx__auth_nonce(uint8_t nonce[TBX__NONCE_LEN])
{
    int rc = sodium_ready();
    if (rc == 0)
        sodium.random(nonce, TBX__NONCE_LEN);
    return rc;
}

int tbx__hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                     uint8_t out[32])
{
    crypto_auth_hmacsha256_state st;
    int rc = sodium_ready();
    if (rc != 0)
        return rc;
    if (sodium.hmac_init(&st, key, key_len) != 0 || sodium.hmac_update(&st, msg, msg_len) != 0 ||
        sodium.hmac_final(&st, out) != 0)
        rc = TBX_EPROTO;
    /* The state holds the key's pads. */
    explicit_bzero(&st, sizeof st);
    return rc;
}

int tbx__auth_prove(const uint8_t key[TBX__KEY_LEN], const char *role,
                    const uint8_t nonce[TBX__NONCE_LEN], uint8_t out[TBX__PROOF_LEN])
{
    uint8_t msg[64 + TBX__NONCE_LEN];
    size_t rlen = strlen(role);
    memcpy(msg, role, rlen);
    memcpy(msg + rlen, nonce, TBX__NONCE_LEN);
    return tbx__hmac_sha256(key, TBX__KEY_LEN, msg, rlen + TBX__NONCE_LEN, out);
}

int tbx__auth_check(const uint8_t key[TBX__KEY_LEN], const char *role,
                    const uint8_t nonce[TBX__NONCE_LEN], const uint8_t proof[TBX__PROOF_LEN])
{
    uint8_t want[TBX__PROOF_LEN];
    int rc = tbx__auth_prove(key, role, nonce, want);
    if (rc != 0)
        return rc;
    return sodium.memcmp_ct(want, proof, TBX__PROOF_LEN) == 0 ? 0 : TBX_EPROTO;
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

int tbx__key_read(const char *file, uint8_t key[TBX__KEY_LEN], int private_only)
{
    char buf[2 * TBX__KEY_LEN + 2];
    struct stat st;
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    if (private_only && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
                         st.st_uid != geteuid() || (st.st_mode & 077) != 0)) {
        tbx__close(fd);
        return -EPERM;
    }
    ssize_t n = tbx__read(fd, buf, sizeof buf - 1);
    tbx__close(fd);
    if (n < 2 * TBX__KEY_LEN)
        return TBX_EINVAL;
    buf[2 * TBX__KEY_LEN] = '\0';
    return tbx__key_parse(buf, key);
}

int tbx__key_write(const char *file, const uint8_t key[TBX__KEY_LEN])
{
    char hex[2 * TBX__KEY_LEN + 2];
    int fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    tbx__key_format(key, hex);
    hex[2 * TBX__KEY_LEN] = '\n';
    int rc = tbx__write_all(fd, hex, 2 * TBX__KEY_LEN + 1);
    tbx__close(fd);
    return rc;
}
