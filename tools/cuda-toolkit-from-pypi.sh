#!/bin/bash
# A CUDA 13.0 build toolchain from NVIDIA's PyPI wheels, for
# `cargo build --release --features cuda` on a machine with no CUDA toolkit
# (the binary then runs on a GPU machine with the driver, cuBLAS and cuRAND).
#
# Usage: tools/cuda-toolkit-from-pypi.sh DEST
# then:  export CUDA_HOME=DEST PATH=DEST/bin:$PATH LIBRARY_PATH=DEST/lib CUDA_COMPUTE_CAP=90
#
# nvcc, its headers, the device compiler (cicc) and libcudart come from the
# wheels. The driver library (libcuda) is never on PyPI, and cuBLAS/cuRAND/NVRTC
# are large; the link needs only their names and symbols, so this writes small
# stub libraries with the sonames of CUDA 13 and the functions cudarc binds.
# Never put DEST/lib on LD_LIBRARY_PATH at run time: the stubs do nothing.
set -euo pipefail
dest=${1:?usage: $0 DEST}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 -m pip download -q --no-deps --only-binary=:all: \
  --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --python-version 3.12 \
  -d "$tmp" "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" \
  "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*"
for w in "$tmp"/*.whl; do unzip -q -o "$w" -d "$tmp/x"; done
mkdir -p "$dest"
cp -a "$tmp/x/nvidia/cu13/." "$dest/"
chmod +x "$dest"/bin/* "$dest"/nvvm/bin/*
ln -sf libcudart.so.13 "$dest/lib/libcudart.so"

# The cudarc version Cargo.lock pins, and its bindings' function names.
version=$(grep -A1 '^name = "cudarc"' "$root/Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$version" 2>/dev/null | head -1)
[ -n "$src" ] || { echo "cudarc $version sources not found: run \`cargo fetch\` first" >&2; exit 1; }
stub() { # stub LIB SONAME MODULE...
  local lib=$1 soname=$2; shift 2
  for m in "$@"; do grep -ohE 'load::<_F>\("[A-Za-z0-9_]+"\)' "$src/src/$m/sys/mod.rs"; done |
    sed -E 's/.*\("([A-Za-z0-9_]+)"\)/void \1(void) {}/' | sort -u > "$tmp/$lib.c"
  gcc -shared -fPIC -Wl,-soname,"$soname" -o "$dest/lib/$lib.so" "$tmp/$lib.c"
}
stub libcuda libcuda.so.1 driver
stub libcublas libcublas.so.13 cublas
stub libcublasLt libcublasLt.so.13 cublaslt
stub libcurand libcurand.so.10 curand
stub libnvrtc libnvrtc.so.13 nvrtc
"$dest/bin/nvcc" --version | tail -1
echo "toolkit in $dest (link stubs: $(ls "$dest"/lib/lib{cuda,cublas,cublasLt,curand,nvrtc}.so | wc -l))"
