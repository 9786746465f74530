#!/usr/bin/env bash
# Checks that a built libtimebox.so exports exactly the functions its public
# headers declare (TBX_EXTERN ... tbx_name(...)): no more, no fewer.  Run by
# CI after the build; prints the difference and fails if there is one.
#
#   bash scripts/check-abi.sh build/libtimebox.so include/timebox.h include/timebox/uv.h
set -euo pipefail

lib=$1
shift
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Declarations: each header on one line, then every "TBX_EXTERN <type> name("
# up to its parenthesis; the name is the last identifier before it.  The
# preprocessor lines (the macro's own definitions) are left out.
grep -hv '^[[:space:]]*#' "$@" | tr '\n' ' ' | grep -o 'TBX_EXTERN[^;(]*(' |
    sed -E 's/.*[^A-Za-z0-9_]([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*\($/\1/' |
    LC_ALL=C sort -u >"$tmp/header"

# Exports: defined dynamic symbols, without the version node itself (an
# absolute symbol) and without the @@VERSION binutils prints.
nm -D --defined-only "$lib" | awk '$2 != "A" { print $3 }' | sed 's/@.*//' |
    LC_ALL=C sort -u >"$tmp/exported"

if ! diff -u --label "declared in $*" --label "exported by $lib" "$tmp/header" "$tmp/exported"; then
    echo "check-abi: $lib and the headers disagree (- only declared, + only exported)" >&2
    exit 1
fi
echo "check-abi: $(wc -l <"$tmp/header") functions, declared and exported alike"
