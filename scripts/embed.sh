#!/usr/bin/env bash
# Turns files into C sources so the binary carries its defaults.
#   scripts/embed.sh INPUT OUTPUT NAME
#       `const unsigned char NAME[]` (NUL terminated) and `const size_t NAME_len`
#       (the default configuration);
#   scripts/embed.sh --rules OUTPUT NAME FILE...
#       `const struct mapping_source NAME[]` and `const size_t NAME_count`, one
#       entry per file named "builtin:<file name>" (the shipped mapping rules).
set -eu

bytes() {
    od -An -v -tx1 "$1" | sed -E 's/ ([0-9a-f]{2})/0x\1,/g'
    echo "0x00"
}

if [ "$1" = --rules ]; then
    shift
    out=$1; name=$2; shift 2
    {
        echo "/* Generated from $* by scripts/embed.sh; do not edit. */"
        echo "#include <stddef.h>"
        echo "#include \"mapping/mapping.h\""
        echo "extern const struct mapping_source ${name}[];"
        echo "extern const size_t ${name}_count;"
        i=0
        for f in "$@"; do
            echo "static const unsigned char ${name}_${i}[] = {"
            bytes "$f"
            echo "};"
            i=$((i + 1))
        done
        echo "const struct mapping_source ${name}[] = {"
        i=0
        for f in "$@"; do
            echo "    {\"builtin:$(basename "$f")\", (const char *)${name}_${i}, sizeof ${name}_${i} - 1},"
            i=$((i + 1))
        done
        echo "};"
        echo "const size_t ${name}_count = $#;"
    } > "$out.tmp"
    mv "$out.tmp" "$out"
    exit 0
fi

in=$1; out=$2; name=$3
{
    echo "/* Generated from $in by scripts/embed.sh; do not edit. */"
    echo "#include <stddef.h>"
    echo "extern const unsigned char ${name}[];"
    echo "extern const size_t ${name}_len;"
    echo "const unsigned char ${name}[] = {"
    bytes "$in"
    echo "};"
    echo "const size_t ${name}_len = sizeof ${name} - 1;"
} > "$out.tmp"
mv "$out.tmp" "$out"
