#!/usr/bin/env bash
# The public API baseline of the four library packages (Microsoft.CodeAnalysis.PublicApiAnalyzers): each of
# src/{Engine,Kernels,Transformer,Alignment} has PublicAPI.Shipped.txt (the surface of the last released version) and
# PublicAPI.Unshipped.txt (what changed since). A public symbol missing from them is RS0016, a listed symbol that is gone
# is RS0017; warnings are errors, so the build fails until the files say what changed.
#
#   tools/public-api.sh          rebuilds the libraries and records every change in PublicAPI.Unshipped.txt: a new symbol
#                                as a line, a removed unshipped one by deleting its line, a removed shipped one as
#                                `*REMOVED*symbol` (what the analyzer's code fix does in an IDE), a shipped one that is
#                                back by deleting that mark. Review the diff, commit it.
#   tools/public-api.sh ship     at a release: folds PublicAPI.Unshipped.txt into PublicAPI.Shipped.txt and empties it.
set -euo pipefail
cd "$(dirname "$0")/.."

projects=(Engine Kernels Transformer Alignment)
header='#nullable enable'

# body FILE: the file's symbol lines (no header, no blank lines)
body() { grep -v -e '^#nullable enable$' -e '^$' "$1" || true; }
# write FILE < lines: the header, then the lines sorted (ordinal) without duplicates
write() { { echo "$header"; LC_ALL=C sort -u; } > "$1.tmp" && mv "$1.tmp" "$1"; }

if [ "${1:-}" = ship ]; then
  for p in "${projects[@]}"; do
    shipped=src/$p/PublicAPI.Shipped.txt unshipped=src/$p/PublicAPI.Unshipped.txt
    removed=$(body "$unshipped" | sed -n 's/^\*REMOVED\*//p')
    { body "$shipped" | grep -vxF -f <(printf '%s\n' "$removed") || true; body "$unshipped" | grep -v '^\*REMOVED\*' || true; } | write "$shipped"
    write "$unshipped" < /dev/null
    echo "$p: $(body "$shipped" | wc -l) shipped symbols"
  done
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: tools/public-api.sh [ship]" >&2; exit 2; }

# Rebuild (so every diagnostic is reported again) with the analyzer's findings as warnings, and read them off the log:
#   FILE(L,C): warning RS0016: Symbol 'SYMBOL' is not part of the declared public API (…) [PROJECT.csproj]
#   FILE(L,C): warning RS0017: Symbol 'SYMBOL' is part of the declared API, but is either not public or could not be found (…) [PROJECT.csproj]
#   FILE(L,C): warning RS0050: Symbol 'SYMBOL' is marked as removed but it isn't deleted in source code (…) [PROJECT.csproj]
log=$(mktemp)
trap 'rm -f "$log"' EXIT
dotnet build src/Alignment/Alignment.csproj --no-incremental -p:TreatWarningsAsErrors=false -tl:off -v:q \
  -clp:NoSummary > "$log" 2>&1 || { grep -E ': error ' "$log" | sort -u | head -20; echo "public-api: the build failed" >&2; exit 1; }

for p in "${projects[@]}"; do
  shipped=src/$p/PublicAPI.Shipped.txt unshipped=src/$p/PublicAPI.Unshipped.txt
  for f in "$shipped" "$unshipped"; do [ -f "$f" ] || echo "$header" > "$f"; done
  diagnostics=$(grep -F "[$PWD/src/$p/$p.csproj]" "$log" || true)
  added=$(printf '%s\n' "$diagnostics" | sed -n "s/.*: warning RS0016: Symbol '\(.*\)' is not part of the declared public API .*/\1/p" | LC_ALL=C sort -u)
  gone=$(printf '%s\n' "$diagnostics" | sed -n "s/.*: warning RS0017: Symbol '\(.*\)' is part of the declared API, but .*/\1/p" | LC_ALL=C sort -u)
  back=$(printf '%s\n' "$diagnostics" | sed -n "s/.*: warning RS0050: Symbol '\(.*\)' is marked as removed but .*/*REMOVED*\1/p" | LC_ALL=C sort -u)
  # A removed symbol leaves Unshipped if it was listed there; a shipped one is marked *REMOVED*; one marked so that is
  # back (RS0050) loses the mark.
  gone_shipped=$(body "$shipped" | grep -xF -f <(printf '%s\n' "$gone") || true)
  { body "$unshipped" | grep -vxF -f <(printf '%s\n' "$gone" "$back") || true
    [ -z "$added" ] || printf '%s\n' "$added"
    [ -z "$gone_shipped" ] || printf '%s\n' "$gone_shipped" | sed 's/^/*REMOVED*/'; } | write "$unshipped"
  echo "$p: $(printf '%s' "$added" | grep -c . || true) added, $(printf '%s' "$gone" | grep -c . || true) removed, $(printf '%s' "$back" | grep -c . || true) back; $unshipped has $(body "$unshipped" | wc -l) lines"
done
