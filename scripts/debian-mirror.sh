#!/usr/bin/env bash
# Which Debian mirror does this machine's apt use? Read at run time, never written into the project.
#
#   scripts/debian-mirror.sh [SUITE]           # prints the mirror's URI for SUITE (default: bookworm)
#   scripts/debian-mirror.sh --keyring [SUITE] # prints the Signed-By keyring of that entry, if any
#
# Looks at /etc/apt/sources.list.d/*.sources (deb822) first, then the one-line *.list files and
# /etc/apt/sources.list. The first enabled `deb` entry that lists SUITE wins. APT_SOURCES_DIR and
# APT_SOURCES_LIST move those places (tests).
set -euo pipefail

want=uri
if [ "${1:-}" = --keyring ]; then want=keyring; shift; fi
suite=${1:-bookworm}
dir=${APT_SOURCES_DIR:-/etc/apt/sources.list.d}
list=${APT_SOURCES_LIST:-/etc/apt/sources.list}

from_deb822() {
    # Paragraphs are separated by blank lines; "#" lines are comments; continuation lines are skipped
    # (URIs and Suites fit on one line in practice).
    awk -v suite="$suite" -v want="$want" '
        function flush() {
            if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " suite " ") && uris != "") {
                split(uris, u, " ")
                print (want == "uri" ? u[1] : signed)
                found = 1
                exit
            }
            types = ""; suites = ""; uris = ""; signed = ""; enabled = ""
        }
        FNR == 1 && NR > 1 { flush() }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        /^[^ \t]/ {
            key = tolower($1); sub(/:$/, "", key)
            val = $0; sub(/^[^:]*:[ \t]*/, "", val)
            if (key == "types") types = val
            else if (key == "suites") suites = val
            else if (key == "uris") uris = val
            else if (key == "signed-by") signed = val
            else if (key == "enabled") enabled = tolower(val)
        }
        END { if (!found) flush() }
    ' "$@"
}

from_one_line() {
    # deb [options] URI SUITE COMPONENT...
    awk -v suite="$suite" -v want="$want" '
        $1 != "deb" { next }
        {
            i = 2; signed = ""
            if ($i ~ /^\[/) {
                while (i <= NF) {
                    if ($i ~ /^\[?signed-by=/) { s = $i; sub(/^\[?signed-by=/, "", s); sub(/\]$/, "", s); signed = s }
                    if ($i ~ /\]$/) { i++; break }
                    i++
                }
            }
            if ($(i + 1) == suite) { print (want == "uri" ? $i : signed); exit }
        }
    ' "$@"
}

result=""
shopt -s nullglob
sources=("$dir"/*.sources)
lists=("$dir"/*.list)
if [ "${#sources[@]}" -gt 0 ]; then result=$(from_deb822 "${sources[@]}"); fi
if [ -z "$result" ]; then
    [ -f "$list" ] && lists=("$list" "${lists[@]}")
    if [ "${#lists[@]}" -gt 0 ]; then result=$(from_one_line "${lists[@]}"); fi
fi
if [ -z "$result" ] && [ "$want" = uri ]; then
    echo "debian-mirror: no enabled 'deb' entry for suite '$suite' in $dir or $list" >&2
    exit 1
fi
echo "${result%/}"
