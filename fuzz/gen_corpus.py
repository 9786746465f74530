#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/: small valid and invalid
inputs in the wire formats of lib/wire.h (host byte order, x86-64).
Run from anywhere; the files are committed, this only remakes them."""
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))

FRAME = 0x31584254   # "TBX1"
REQUEST = 0x51584254  # "TBXQ"
CONTROL = 0x4b584254  # "TBXK"
OK, FAIL, START, ERROR, OK_BULK = 1, 2, 3, 4, 5


def frame(kind, payload=b"", code=0, magic=FRAME, reserved=0, length=None):
    n = len(payload) if length is None else length
    return struct.pack("=IIiIQ", magic, kind, code, reserved, n) + payload


def request(name, args, flags=1, magic=REQUEST, label=b"", label_len=None, name_len=None,
            args_len=None, deadline=0, timeout=0, grace=10**9, max_result=256 << 20):
    nl = len(name) if name_len is None else name_len
    ll = len(label) if label_len is None else label_len
    al = len(args) if args_len is None else args_len
    return struct.pack("=IIIIQQQQQ", magic, flags, nl, ll, al, deadline, timeout,
                       grace, max_result) + name + label + args


def control(kind, pid=0, code=0, magic=CONTROL, user_us=0, sys_us=0, max_rss_kb=0):
    return struct.pack("=IIiiQQQ", magic, kind, pid, code, user_us, sys_us, max_rss_kb)


def nested(depth, inner=b"\x01"):
    return b"\x91" * depth + inner


seeds = {
    "frames": {
        # first byte: which max_result (index 0: 256 MiB)
        "ok_int": b"\x00" + frame(OK, b"\x2a"),
        "ok_map": b"\x00" + frame(OK, b"\x82\xa1a\x01\xa1b\x92\xc0\xc3"),
        "ok_bin": b"\x00" + frame(OK, b"\xc4\x03abc"),
        "ok_str16": b"\x00" + frame(OK, b"\xda\x00\x05hello"),
        "ok_ext": b"\x00" + frame(OK, b"\xd4\x01\x02"),
        "ok_nested32": b"\x00" + frame(OK, nested(32)),
        "ok_nested33": b"\x00" + frame(OK, nested(33)),
        "start_ok": b"\x00" + frame(START) + frame(OK, b"\xc0"),
        "start_twice": b"\x00" + frame(START) + frame(START),
        "fail": b"\x00" + frame(FAIL, b"bad input 7", code=42),
        "fail_long": b"\x00" + frame(FAIL, b"m" * 1024, code=1),
        "error": b"\x00" + frame(ERROR, b"not registered", code=-30007),
        "zero_len_ok": b"\x00" + frame(OK),
        "truncated_payload": b"\x00" + frame(OK, b"\x92\x01", length=100),
        "truncated_header": b"\x00" + frame(OK, b"\x01")[:10],
        "oversize": b"\x05" + frame(OK, b"\x01" * 8, length=1 << 40),
        "bad_magic": b"\x00" + frame(OK, b"\x01", magic=0x31584255),
        "reserved": b"\x00" + frame(OK, b"\x01", reserved=1),
        "two_objects": b"\x00" + frame(OK, b"\x01\x02"),
        "lying_count": b"\x00" + frame(OK, b"\xdd\xff\xff\xff\xff\xc0"),
        "lying_bin": b"\x00" + frame(OK, b"\xc6\x7f\xff\xff\xff\x00"),
        "trailing_frame": b"\x00" + frame(OK, b"\x2a") + frame(OK, b"\x05"),
        "big_payload": b"\x40" + frame(OK, b"\xc5\x10\x00" + bytes(4096)),
        # the rest of the input is the bulk memfd: sealed (first byte's high
        # bit) or not, of the size the header says or not
        "bulk_sealed": b"\x80" + frame(OK_BULK, length=9) + b"\x82\xa1a\x01\xa1b\x92\xc0\xc3",
        "bulk_unsealed": b"\x00" + frame(OK_BULK, length=9) + b"\x82\xa1a\x01\xa1b\x92\xc0\xc3",
        "bulk_short": b"\x80" + frame(OK_BULK, length=100) + b"\xc4\x03abc",
        "bulk_empty": b"\x80" + frame(OK_BULK, length=0),
    },
    "request": {
        # first byte: piece size selector
        "valid": b"\x00" + request(b"fuzz_fn", b"\x93\x01\x02\x03"),
        "valid_pieces": b"\x07" + request(b"fuzz_fn", b"\x82\xa1k\xc0\xa1v\xc3"),
        "valid_soft": b"\x01" + request(b"fuzz_fn", b"\xc0", flags=3, timeout=10**9),
        "unknown_name": b"\x00" + request(b"no_such_fn", b"\xc0"),
        "bad_args": b"\x00" + request(b"fuzz_fn", b"\xc1"),
        "two_args": b"\x00" + request(b"fuzz_fn", b"\x01\x02"),
        "deep_args": b"\x00" + request(b"fuzz_fn", nested(40)),
        "lying_args": b"\x00" + request(b"fuzz_fn", b"\xdd\xff\xff\xff\xff\xc0"),
        "cut_short": b"\x00" + request(b"fuzz_fn", b"\x93\x01\x02\x03", args_len=100),
        "bad_magic": b"\x00" + request(b"fuzz_fn", b"\xc0", magic=0),
        "bad_flags": b"\x00" + request(b"fuzz_fn", b"\xc0", flags=0x100),
        # REQ_CAPTURE (128): two pipe ends come with it, after the memfd
        "capture": b"\x00" + request(b"fuzz_fn", b"\xc0", flags=1 | 128),
        "capture_bulk": b"\x41" + request(b"fuzz_fn", b"\x92\xa2hi\x07", flags=1 | 16 | 128),
        "capture_two_fds": b"\xc1" + request(b"fuzz_fn", b"\xc0", flags=1 | 16 | 128),
        "zero_name": b"\x00" + request(b"", b"\xc0"),
        "long_name": b"\x00" + request(b"n" * 300, b"\xc0"),
        "zero_max_result": b"\x00" + request(b"fuzz_fn", b"\xc0", max_result=0),
        "huge_args_len": b"\x00" + request(b"fuzz_fn", b"\xc0", args_len=1 << 40),
        "header_only": b"\x00" + request(b"fuzz_fn", b"\xc0")[:30],
        "labelled": b"\x00" + request(b"fuzz_fn", b"\xc0", label=b"job-42"),
        "label_control": b"\x00" + request(b"fuzz_fn", b"\xc0", label=b"a\nb"),
        "label_long": b"\x00" + request(b"fuzz_fn", b"\xc0", label=b"l" * 256),
        # the control byte's top bits: 0x40 args in a sealed memfd, 0x80 the
        # memfd unsealed, 0xc0 a descriptor on each of the first two pieces
        "bulk_sealed": b"\x41" + request(b"fuzz_fn", b"\x92\xa2hi\x07", flags=1 | 16),
        "bulk_unsealed": b"\x80" + request(b"fuzz_fn", b"\x92\xa2hi\x07", flags=1 | 16),
        "bulk_no_flag": b"\x40" + request(b"fuzz_fn", b"\xc0"),
        "bulk_wrong_size": b"\x40" + request(b"fuzz_fn", b"\xc0", flags=1 | 16, args_len=9),
        "two_fds": b"\xc1" + request(b"fuzz_fn", b"\xc0", flags=1 | 16),
    },
    "control": {
        "launched": control(1, 1234, 0),
        "exited": control(2, 1234, 9),
        "error": control(3, 0, -11),
        "kill_term": control(4, 0, 15),
        "kill_zero": control(4, 0, 0),
        "kill_65": control(4, 0, 65),
        "bad_magic": control(4, 0, 9, magic=0),
        "sequence": control(1, 77, 0) + control(2, 77, 0) + control(4, 0, 9),
        "half": control(2, 1, 1)[:9],
        "exited_cost": control(2, 1234, 0, user_us=1500, sys_us=20, max_rss_kb=4096),
        "trace": control(5, 0, 0),
        "trace_crash": control(5, 0, 11),
        "trace_66": control(5, 0, 66),
        "traced": control(6, 1234, 1),
        "key": b"00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF",
        "key_short": b"0011",
        "key_bad_digit": b"0g112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    },
}

for target, files in seeds.items():
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
print("wrote", sum(len(f) for f in seeds.values()), "seeds")
