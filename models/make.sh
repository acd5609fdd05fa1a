#!/usr/bin/env bash
# Rebuilds the shipped models from scratch: MCMC reference data (1,000 training + 1,000
# validation samples), then the paper's protocol (50 epochs of maximum likelihood, batch 64,
# AdamW lr 5e-3 with amsgrad), keeping the epoch with the best validation NLL.
# Usage: bash models/make.sh   (from the repository root; about a minute for DW-4, a few for LJ-13)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
eqflow=target/release/eqflow
tmp=$(mktemp -d)
for system in dw4 lj13; do
  "$eqflow" mcmc --system "$system" -n 2000 --seed 1 --out "$tmp/$system.npy" --quiet
  "$eqflow" train --system "$system" --data "$tmp/$system.npy" --out "models/$system.json" \
    --n-train 1000 --n-val 1000 --epochs 50 --seed 0 --quiet
done
rm -rf "$tmp"
