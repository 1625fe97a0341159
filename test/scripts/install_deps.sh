#!/bin/sh
# Install what the test suite needs when it is missing:
#   Debian packages with apt-get (only when running as root; otherwise list
#   them and fail), and the pinned Python test requirements with pip.
# Safe to run repeatedly: it installs nothing when everything is present.
set -eu
cd "$(dirname "$0")/../.."

missing=""
need_pkg() { # need_pkg PACKAGE TEST-COMMAND...
    pkg=$1; shift
    if ! "$@" >/dev/null 2>&1; then missing="$missing $pkg"; fi
}
have() { command -v "$1"; }
need_pkg make            have make
need_pkg gcc             have gcc
need_pkg g++             have g++
need_pkg clang           have clang
need_pkg libomp-dev      sh -c 'test -n "$(ls /usr/lib/llvm-*/lib/libomp.so* 2>/dev/null)"'
# libFuzzer's runtime, for `make fuzz` (Debian 12's clang is version 14).
need_pkg libclang-rt-14-dev sh -c 'test -n "$(ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a 2>/dev/null)"'
need_pkg pkg-config      have pkg-config
need_pkg check           sh -c 'pkg-config --exists check'
need_pkg doxygen         have doxygen
# Graphviz: the architecture diagram of the Doxygen main page (docs/architecture.dot).
need_pkg graphviz        have dot
need_pkg python3         have python3
need_pkg python3-pip     python3 -m pip --version
# Real English text for the tokenizer and BERT tests (/usr/share/games/fortunes).
need_pkg fortunes        test -f /usr/share/games/fortunes/fortunes
# Open MPI, for libtblocks_mpi.a, gpt_mpi and the data-parallel tests.
need_pkg openmpi-bin     have mpirun
need_pkg libopenmpi-dev  have mpicc
# qemu-user: CPUs this machine is not (AVX2-only, no AVX) for
# test/scripts/emulated_cpus.sh; it runs x86_64 programs only.
if [ "$(uname -m)" = x86_64 ]; then need_pkg qemu-user have qemu-x86_64; fi
# iproute2 (ip netns, veth): two hosts over TCP in test/scripts/mpi_gpt.sh,
# which only root can make (as a user that test reports NOT RUN).
if [ "$(id -u)" = 0 ]; then need_pkg iproute2 have ip; fi

if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "install_deps: installing Debian packages:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "install_deps: missing Debian packages:$missing" >&2
        echo "install_deps: run 'sudo apt-get install$missing' or run make check as root" >&2
        exit 1
    fi
fi

# Python test requirements (pinned). pip does nothing when they are satisfied.
req=test/requirements.txt
if ! python3 test/scripts/check_requirements.py "$req" >/dev/null 2>&1; then
    echo "install_deps: installing Python test requirements from $req"
    if ! python3 -m pip install -q -r "$req"; then
        # Debian's own python3 refuses system-wide pip installs (PEP 668).
        python3 -m pip install -q --break-system-packages -r "$req"
    fi
    python3 test/scripts/check_requirements.py "$req"
fi
echo "install_deps: all test dependencies present"
