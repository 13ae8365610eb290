#!/usr/bin/env bash
# The glibc a shared object needs, read from its version references (objdump -p: the versions of each
# library it was linked against that the dynamic loader checks before loading it). Prints the highest
# GLIBC_ version and fails when it is above MAX, or when the object needs libstdc++ or libgcc_s
# versions (GLIBCXX_, CXXABI_, GCC_): the addon links those statically, as an older system's copies
# would not have the versions a newer compiler's need.
#
#   bash scripts/glibc-ceiling.sh FILE [MAX]      (MAX defaults to 2.28)
set -euo pipefail
file=${1:?usage: glibc-ceiling.sh FILE [MAX]}
max=${2:-2.28}
[ -f "$file" ] || { echo "glibc-ceiling: $file does not exist" >&2; exit 1; }

# "Version References:" lists, per needed library, lines "0x... 0x00 NN GLIBC_2.17".
refs=$(objdump -p "$file" | awk '/^Version References:/ { on = 1; next } on && /^[^ \t]/ { on = 0 } on && NF == 4 { print $4 }')
if [ -z "$refs" ]; then
  echo "glibc-ceiling: $file has no version references (not a dynamically linked ELF object?)" >&2
  exit 1
fi
glibc=$(grep -E '^GLIBC_[0-9]+(\.[0-9]+)+$' <<<"$refs" | sed 's/^GLIBC_//' | sort -Vu)
highest=$(tail -n1 <<<"$glibc")
echo "glibc-ceiling: $(basename "$file") needs glibc $highest, at most $max allowed (versions referenced: $(tr '\n' ' ' <<<"$glibc" | sed 's/ $//'))"

fail=0
cxx=$(grep -E '^(GLIBCXX|CXXABI|GCC)_' <<<"$refs" | sort -Vu | tr '\n' ' ' || true)
if [ -n "$cxx" ]; then
  echo "glibc-ceiling: $file needs the system's libstdc++/libgcc_s ($cxx); they must be linked statically" >&2
  fail=1
fi
if [ "$(printf '%s\n%s\n' "$max" "$highest" | sort -V | tail -n1)" != "$max" ]; then
  echo "glibc-ceiling: $file needs glibc $highest, above the supported $max; these symbols are the cause:" >&2
  objdump -T "$file" | awk -v max="$max" '{ for (i = 1; i <= NF; i++) if ($i ~ /^\(?GLIBC_[0-9.]+\)?$/) { v = $i; gsub(/[()]|GLIBC_/, "", v); print v, $NF } }' |
    while read -r v sym; do
      [ "$(printf '%s\n%s\n' "$max" "$v" | sort -V | tail -n1)" = "$max" ] || echo "  $sym@GLIBC_$v" >&2
    done
  fail=1
fi
exit $fail
