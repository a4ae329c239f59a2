#!/usr/bin/env bash
# System packages the tests need (Mosquitto as the broker, socat for ptys,
# openssl for the TLS tests' CA). Run by `make test` before pytest, as
# tools/setup_env.sh makes the venv: installed with apt-get when root and
# missing; otherwise one line saying what to install, exit 1.
set -euo pipefail
need=""
sbin=${V2G_SBIN:-/usr/sbin}  # Debian's mosquitto is there, off a non-root PATH
have() { command -v "$1" >/dev/null 2>&1 || [ -x "$sbin/$1" ]; }
have mosquitto || need="$need mosquitto"
have socat || need="$need socat"
have openssl || need="$need openssl"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing system packages:$need (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # the tests start their own brokers on free ports; a system broker the
    # package may start on 1883 does not get in their way
    apt-get install -y -qq --no-install-recommends $need >/dev/null
    exit 0
fi
echo "setup: the tests need:$need; install with: sudo apt-get install$need" >&2
exit 1
