# Doxygen's INPUT_FILTER for the public headers.  The headers are written to
# be read as they are (sqlite.h's way): plain C comments before each
# declaration, and after each field.  This turns those comments into the
# ones Doxygen reads, at documentation time only, so that the header stays
# plain and a declaration without a comment is still reported (CI fails on
# it).  Section banners ("/* ----") stay plain comments.
#
# The comment that opens the file documents the file (without it, Doxygen
# would neither show nor check the file's functions).
1s,^/\*$,/** @file,
# A comment that opens a line documents what follows it.
s,^\([[:space:]]*\)/\*\([^*-]\),\1/**\2,
s,^\([[:space:]]*\)/\*$,\1/**,
# A comment after a field, an enum value or a parameter documents it.
s,\([;,{]\)\([[:space:]]*\)/\*\([^*]\),\1\2/**<\3,
# A comment after a macro's value documents the macro.
s,^\(#define [^/]*[^[:space:]/]\)\([[:space:]]*\)/\*\([^*]\),\1\2/**<\3,
