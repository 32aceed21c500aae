#!/usr/bin/env bash
# Download here, into .whl/ (git-ignored through .git/info/exclude), the wheels that the lent GPU machine lacks or
# holds in older versions (its Python is 3.12; see /work/.library/device/KINDS.md), at the versions of this .venv.
# Then: device run with carry [".whl"] and `bash benchmarks/gpu_check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for name in transformers trl peft accelerate datasets diffusers huggingface_hub tokenizers safetensors dill \
            multiprocess hf_xet; do
    version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d .whl "$name==$version"
done
du -sh .whl
