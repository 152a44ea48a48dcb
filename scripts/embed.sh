#!/usr/bin/env bash
# Turns a file into a C source defining `const unsigned char NAME[]` (NUL
# terminated) and `const size_t NAME_len`, so the binary carries its default
# configuration.   scripts/embed.sh INPUT OUTPUT NAME
set -eu
in=$1; out=$2; name=$3
{
    echo "/* Generated from $in by scripts/embed.sh; do not edit. */"
    echo "#include <stddef.h>"
    echo "extern const unsigned char ${name}[];"
    echo "extern const size_t ${name}_len;"
    echo "const unsigned char ${name}[] = {"
    od -An -v -tx1 "$in" | sed -E 's/ ([0-9a-f]{2})/0x\1,/g'
    echo "0x00 };"
    echo "const size_t ${name}_len = sizeof ${name} - 1;"
} > "$out.tmp"
mv "$out.tmp" "$out"
