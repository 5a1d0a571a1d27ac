#!/usr/bin/env bash
# README command 2: every test (unit, property, integration against real PostgreSQL and
# Redis, end-to-end with the real binaries). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/setup.sh
# The end-to-end tests run the binaries, so build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
