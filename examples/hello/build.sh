#!/usr/bin/env bash
# Builds the example app as a static binary and places it next to its Dockerfile, so that
# `berth deploy -f examples/hello/berth.toml` can build a FROM scratch image without a registry.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="x86_64-unknown-linux-gnu"
# A separate target directory: static RUSTFLAGS would otherwise invalidate the main build.
CARGO_TARGET_DIR="$root/target/static" RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --quiet --release --locked -p hello --target "$target"
install -m 0755 "$root/target/static/$target/release/hello" "$here/hello"
