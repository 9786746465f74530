#!/usr/bin/env bash
# The size rules for the library's sources (STYLE.md): no file in lib/ over
# 500 lines, no function over 80.  A function is counted from the line after
# its opening brace (alone in column 0, as the style writes them) to its
# closing brace in column 0.  Prints each breach; exits 1 if there is one.
#
#   scripts/check-sizes.sh [file...]     default: every .c and .h under lib/
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
max_file=500
max_fn=80
if [[ $# -gt 0 ]]; then
    files=("$@")
else
    mapfile -t files < <(find lib -name '*.[ch]' | sort)
fi

# Plain POSIX awk (Debian's default is mawk): a file's length is checked
# when the next one starts, and at the end.
awk -v max_file="$max_file" -v max_fn="$max_fn" '
    function check_length() {
        if (file != "" && lines > max_file) {
            printf "%s: %d lines (at most %d)\n", file, lines, max_file
            bad = 1
        }
    }
    FNR == 1 { check_length(); file = FILENAME; prev = ""; start = 0 }
    { lines = FNR }
    /^\{$/ { start = FNR; name = prev; sub(/\(.*/, "", name); sub(/.*[ *]/, "", name) }
    /^\}/ && start {
        n = FNR - start - 1
        if (n > max_fn) { printf "%s:%d: %s is %d lines (at most %d)\n", FILENAME, start, name, n, max_fn; bad = 1 }
        start = 0
    }
    /[^ \t]/ && !/^\{$/ { if (!start) prev = $0 }
    END { check_length(); exit bad }
' "${files[@]}"
