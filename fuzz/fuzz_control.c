/*
 * fuzz_control: the forkserver's control messages, both ways
 * (tbx__control_check: LAUNCHED / EXITED / ERROR / TRACED from the server,
 * KILL and TRACE from a client), read as lib/engine.c control_cb and lib/forkserver.c read_kills
 * read them: fixed-size messages from a stream, each checked before use.
 * Also the key parser of the shared server (tbx__key_parse), which reads a
 * key a file or the environment gives.
 *
 * Invariants: a KILL the server accepts carries a signal in 1..64, a TRACE
 * 0..64 (both are passed to kill()); a message from the server is accepted
 * only with one of its four kinds; a key parses only from exactly 64 hex digits, and parses
 * back to the same text.
 */
#include "forkserver/auth.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    while (size - off >= sizeof(tbx__control)) {
        tbx__control m;
        memcpy(&m, data + off, sizeof m);
        off += sizeof m;
        if (tbx__control_check(&m, 0) == 0) {
            int min = m.kind == TBX__CTL_TRACE ? 0 : 1;
            if (m.magic != TBX__CONTROL_MAGIC ||
                (m.kind != TBX__CTL_KILL && m.kind != TBX__CTL_TRACE) || m.code < min ||
                m.code > 64)
                __builtin_trap();
        }
        if (tbx__control_check(&m, 1) == 0) {
            if (m.magic != TBX__CONTROL_MAGIC ||
                (m.kind != TBX__CTL_LAUNCHED && m.kind != TBX__CTL_EXITED &&
                 m.kind != TBX__CTL_ERROR && m.kind != TBX__CTL_TRACED))
                __builtin_trap();
        }
    }

    /* The key: a NUL-terminated copy of the whole input. */
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    uint8_t key[TBX__KEY_LEN];
    if (tbx__key_parse(text, key) == 0) {
        size_t len = strlen(text);
        size_t digits = 0;
        while (digits < len && isxdigit((unsigned char)text[digits]))
            digits++;
        if (digits != 2 * TBX__KEY_LEN)
            __builtin_trap(); /* accepted something that is not 64 hex digits */
        char back[2 * TBX__KEY_LEN + 1];
        for (size_t i = 0; i < TBX__KEY_LEN; i++)
            snprintf(back + 2 * i, 3, "%02x", key[i]);
        for (size_t i = 0; i < 2 * TBX__KEY_LEN; i++)
            if (back[i] != tolower((unsigned char)text[i]))
                __builtin_trap();
    }
    free(text);
    return 0;
}
