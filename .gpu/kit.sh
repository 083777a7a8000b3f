#!/usr/bin/env bash
# Builds, on this (CPU) machine, what a device session carries to the GPU machine, which has no
# network and no ../shared: .whl/ (the packages the harness imports that the H200 image lacks, as
# CPython 3.12 wheels at this .venv's versions) and .gpudata/pet-sub (every 2nd trainval line and
# every 10th test line of the shared 128 px set: 1,840 + 367 images, official layout). Both are
# git-ignored, so a fresh checkout must run this again. Then, with the device tool:
#   run(command="DEADLINE=520 bash .gpu/check.sh", timeout_s=580, carry=[".whl", ".gpudata"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SRC=${SRC:-../shared/data/oxford-pet-128}

# Found in session 5 by running harness.tools.bench under an import hook that blocked what the image
# lacks (mlflow's model registry imports cryptography at load time; flask, graphene, uvicorn,
# IPython and docker are not needed).
NAMES="albucore albumentations alembic annotated-types cachetools cffi cryptography databricks-sdk
fastapi gitdb GitPython google-auth importlib_metadata Mako mlflow mlflow-skinny mlflow-tracing
opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions pyasn1
pyasn1_modules pycparser pydantic pydantic_core simsimd smmap SQLAlchemy sqlparse starlette
stringzilla typing_extensions typing-inspection"
PINS=$($PY -c 'import sys
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' $NAMES)
rm -rf .whl && mkdir -p .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl $PINS

D=.gpudata/pet-sub
rm -rf "$D" && mkdir -p "$D/images" "$D/annotations/trimaps"
awk 'NR%2==1' "$SRC/annotations/trainval.txt" > "$D/annotations/trainval.txt"
awk 'NR%10==1' "$SRC/annotations/test.txt" > "$D/annotations/test.txt"
cat "$D"/annotations/{trainval,test}.txt | awk '{print $1}' | while read -r n; do
  cp "$SRC/images/$n.jpg" "$D/images/"; cp "$SRC/annotations/trimaps/$n.png" "$D/annotations/trimaps/"
done
size() { du -sh --apparent-size "$1" | cut -f1; }
echo "kit: $(ls .whl | wc -l) wheels ($(size .whl)), $(ls "$D/images" | wc -l) images ($(size "$D"))"
