#!/usr/bin/env bash
# The wide photo set for the in-silico brain, .cache/photos-wide (40 photos):
# scikit-image's 15 of .cache/photos, 2 from scikit-learn's wheel, and 23 photographs
# from Debian's wallpaper packages (mate-backgrounds' nature set, and the photographs
# among plasma-workspace-wallpapers; the drawn and rendered wallpapers are left out).
# Each file is pinned by SHA-256 in scripts/photos_wide.tsv with its licence, and a
# package by its version, so a brain cut from the set is the same on every machine.
#   vcl synth --preset demo --photos .cache/photos-wide --out data/demo-wide
# `apt-get download` needs no root; a machine without package lists (a fresh container)
# needs one `apt-get update`, which this runs when it is root. About 140 MB is
# downloaded into a temporary folder and removed; the set itself is 18 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
OUT=.cache/photos-wide
LIST=scripts/photos_wide.tsv
STAMP=.cache/photos-wide.stamp
want_stamp() { cat "$LIST" scripts/setup_photos.sh | sha256sum | cut -c1-32; }
if [[ -d "$OUT" && -f "$STAMP" && "$(cat "$STAMP")" == "$(want_stamp)" ]]; then exit 0; fi

SITE="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
PART="$OUT.partial"
rm -rf "$PART" && mkdir -p "$PART"
cp .cache/photos/* "$PART/"

download() {  # download <package=version> into $TMP
  # A Debian point release can replace the pinned version; the photos rarely change
  # with it, and their SHA-256 (checked below) decides, so the current one is tried too.
  (cd "$TMP" && { apt-get download -qq "$1" || apt-get download -qq "${1%%=*}"; } >/dev/null)
}

fetch_deb() {  # fetch_deb <package=version>: the .deb's path in $TMP
  local spec="$1" deb
  if ! download "$spec" 2>/dev/null; then
    if [[ "$(id -u)" == 0 ]]; then
      apt-get update -qq >/dev/null
      download "$spec" || { echo "setup_photos: apt-get download $spec failed" >&2; exit 1; }
    else
      echo "setup_photos: apt-get download $spec failed (no package lists? sudo apt-get update)" >&2
      exit 1
    fi
  fi
  deb="$(ls "$TMP"/"${spec%%=*}"_*.deb)"
  echo "$deb"
}

declare -A DEBS
echo "setup_photos: building $OUT from $LIST"
while IFS=$'\t' read -r name source path sha licence author; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  case "$source" in
    pypi:*) src="$SITE/$path" ;;
    deb:*)
      spec="${source#deb:}"
      if [[ -z "${DEBS[$spec]:-}" ]]; then
        deb="$(fetch_deb "$spec")"
        mkdir -p "$TMP/${spec%%=*}"
        dpkg-deb -x "$deb" "$TMP/${spec%%=*}"
        rm -f "$deb"
        DEBS[$spec]="$TMP/${spec%%=*}"
      fi
      src="${DEBS[$spec]}/$path" ;;
    *) echo "setup_photos: $LIST: unknown source '$source' for $name" >&2; exit 1 ;;
  esac
  [[ -f "$src" ]] || { echo "setup_photos: $name: $src is missing ($source)" >&2; exit 1; }
  got="$(sha256sum "$src" | cut -c1-64)"
  [[ "$got" == "$sha" ]] || {
    echo "setup_photos: $name ($source $path): SHA-256 $got, $LIST pins $sha" >&2; exit 1; }
  cp "$src" "$PART/$name"
done < "$LIST"

rm -rf "$OUT" && mv "$PART" "$OUT"
want_stamp > "$STAMP"
echo "setup_photos: done ($(ls "$OUT" | wc -l) photos in $OUT)"
