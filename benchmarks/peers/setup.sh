#!/usr/bin/env bash
# Create the peers' virtual environments, each from its pinned requirements file, once:
#   .venv-torch  torch + torchvision, for benchmarks/check_torch_equivalence.py
#   .venv-nncf   nncf==3.4.0 (its dependencies may clash with the project's)
#   .venv-aimet  aimet-onnx==2.42.0
# Usage (from anywhere): bash benchmarks/peers/setup.sh [torch|nncf|aimet ...]   (default: all three)
# A venv is rebuilt only when its requirements file changes (a stamp holds the file's hash).
# PEER_PYTHON picks the interpreter (default python3.11: torch 2.14 and aimet-onnx ship cp311 wheels).
# Benchmarks may call this; the project's tests never need it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEERS="$ROOT/benchmarks/peers"
PYTHON="${PEER_PYTHON:-python3.11}"

setup_peer() {
    local peer="$1"
    local venv="$ROOT/.venv-$peer"
    local requirements="$PEERS/requirements-$peer.txt"
    local stamp
    stamp="$venv/.installed-$(sha256sum "$requirements" | cut -c1-12)"
    if [[ -f "$stamp" ]]; then
        echo "$peer: $venv is up to date"
        return 0
    fi
    echo "$peer: creating $venv"
    # Called in an `||` list, so errexit is off in here: every step checks its own status.
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv" || return 1
    "$venv/bin/python" -m pip install --quiet --requirement "$requirements" || return 1
    if [[ "$peer" == torch ]]; then
        # Architecture code only: its metadata asks for an unpinned torch, which is already installed.
        "$venv/bin/python" -m pip install --quiet --no-deps efficientnet-lite-pytorch==0.1.0 || return 1
        # The project itself, so the check imports the same model builders the tests use.
        "$venv/bin/python" -m pip install --quiet --no-deps --editable "$ROOT" || return 1
    fi
    touch "$stamp"
}

peers=("$@")
if [[ ${#peers[@]} -eq 0 ]]; then
    peers=(torch nncf aimet)
fi
status=0
for peer in "${peers[@]}"; do
    case "$peer" in
        torch | nncf | aimet) setup_peer "$peer" || { echo "$peer: setup failed" >&2; status=1; } ;;
        *) echo "unknown peer '$peer' (known: torch nncf aimet)" >&2; status=2 ;;
    esac
done
exit "$status"
