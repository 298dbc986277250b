#!/usr/bin/env bash
# The Debian packages the local stack and the tests run: Redis (the serving tier) and Prometheus
# (promtool and the server, for monitoring/). Installs only what is missing; needs root (or sudo)
# the first time. Called by `make venv`, so `make demo` and `make test` do it on a fresh machine.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "missing Debian packages: ${need[*]}; install them as root: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
echo "installing Debian packages: ${need[*]}"
"${sudo[@]}" apt-get update -qq
# No daemons: the project starts its own Redis and Prometheus on 127.0.0.1 and stops them.
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's packages start system services where an init system runs; stop them if they did, so
# only what the project starts listens.
for service in redis-server prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    "${sudo[@]}" systemctl stop "$service" || true
  fi
done
command -v redis-server >/dev/null && command -v prometheus >/dev/null && command -v promtool >/dev/null
