#!/usr/bin/env bash
# The DistAlign packages from the outside: packs them into a local folder feed, installs the distalign tool from that feed,
# restores this sample from it (the feed for DistAlign.*, your configured NuGet sources for everything else) and runs it.
#
#   bash samples/dotnet-package/run.sh [MODEL.safetensors [PROMPT RESPONSE]...]
#
# Without MODEL, the installed tool pretrains a tiny one first. The sample and the installed tool's `distalign score` must
# give the same log-prob for the first pair (the script fails otherwise). Everything goes to a temporary folder, removed at
# the end (KEEP=1 keeps it): the feed, the tool, and the restored DistAlign packages — they are not put into your NuGet
# cache, where a later pack of the same version would be shadowed by the cached copy. Third-party packages are read from
# your NuGet cache (the pack step restored them there) and downloaded only if missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)


work=$(mktemp -d)
if [ "${KEEP:-0}" = 1 ]; then echo "work folder: $work"; else trap 'rm -rf "$work"' EXIT; fi
feed=$work/feed packages=$work/packages tools=$work/tools

# 1. Pack: the four libraries and the tool (every IsPackable project of the solution), with symbols.
version=$(dotnet msbuild "$repo/src/Engine/Engine.csproj" -getProperty:Version)
dotnet pack "$repo/DistAlign.sln" -c Release -o "$feed" -tl:off -v:q -clp:NoSummary > "$work/pack.log" 2>&1 ||
  { cat "$work/pack.log"; echo "run.sh: dotnet pack failed" >&2; exit 1; }
echo "pack: DistAlign $version into a local feed:"
for f in "$feed"/*.nupkg "$feed"/*.snupkg; do printf '  %-40s %12s bytes\n' "$(basename "$f")" "$(stat -c %s "$f")"; done

# 2. The tool, from the feed, into its own folder (and its store there; NUGET_PACKAGES: nothing of it lands in your cache).
NUGET_PACKAGES=$packages dotnet tool install DistAlign.Cli --version "$version" --tool-path "$tools" --add-source "$feed" \
  > "$work/tool.log" 2>&1 || { cat "$work/tool.log"; echo "run.sh: dotnet tool install failed" >&2; exit 1; }
"$tools/distalign" --help > "$work/help.txt"
echo "tool: DistAlign.Cli $version installed; distalign --help: \"$(sed -n 2p "$work/help.txt" | sed 's/^ *//')\" commands: $(
  sed -n '/^Commands:/,$p' "$work/help.txt" | awk 'NR > 1 && NF {print $1}' | paste -sd ' ')"

# 3. A model: the one given, or a tiny one the installed tool pretrains.
if [ $# -ge 1 ]; then
  model=$1; shift
else
  "$tools/distalign" pretrain --out "$work/model" --steps 2 --layers 1 --heads 2 --channels 16 --context 16 --batch 2 --seq 8 \
    --eval-every 2 --checkpoint-every 2 > "$work/pretrain.log" 2>&1 || { cat "$work/pretrain.log"; exit 1; }
  model=$work/model/model.safetensors
  echo "model: pretrained by the installed tool (1 layer, 16 channels, 2 steps): $model"
fi

# 4. The sample, restored from the feed (RestoreAdditionalProjectSources adds it to your configured sources) into the
#    temporary packages folder, with your NuGet cache as a read-only fallback for the third-party packages.
global=$(dotnet nuget locals global-packages --list | sed 's/^global-packages: //')
restore=(-p:DistAlignVersion="$version" -p:RestoreAdditionalProjectSources="$feed" -p:RestorePackagesPath="$packages"
         -p:RestoreAdditionalProjectFallbackFolders="$global")
dotnet build "$here" -c Release "${restore[@]}" -tl:off -v:q -clp:NoSummary > "$work/build.log" 2>&1 ||
  { cat "$work/build.log"; echo "run.sh: the sample did not build" >&2; exit 1; }
for id in distalign.engine distalign.kernels distalign.transformer distalign.alignment; do
  [ -d "$packages/$id/$version" ] || { echo "run.sh: $id $version was not restored from the local feed" >&2; exit 1; }
done
echo "sample: restored DistAlign.Alignment $version and its DistAlign dependencies from the local feed"
sample_out=$(dotnet run --project "$here" -c Release --no-build "${restore[@]}" -- "$model" "$@")
echo "$sample_out" | sed 's/^/sample: /'

# 5. The same first pair through the installed tool: the same float.
if [ $# -ge 2 ]; then prompt=$1 response=$2; else prompt="Call me" response=" Ishmael."; fi
json_string() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
printf '{"prompt": %s, "response": %s}\n' "$(json_string "$prompt")" "$(json_string "$response")" > "$work/one.jsonl"
tool_out=$("$tools/distalign" score --model "$model" --data "$work/one.jsonl" 2>/dev/null)
echo "tool: distalign score: $tool_out"
sample_logprob=$(echo "$sample_out" | awk '$1 == "logprob" {print $2; exit}')
tool_logprob=$(echo "$tool_out" | sed -E 's/.*"logprob":([^,}]*).*/\1/')
if [ "$sample_logprob" != "$tool_logprob" ]; then
  echo "run.sh: the sample's log-prob $sample_logprob differs from the tool's $tool_logprob" >&2
  exit 1
fi
echo "ok: the package sample and the installed tool give the same log-prob, $sample_logprob"
