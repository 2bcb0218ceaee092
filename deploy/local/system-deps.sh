#!/usr/bin/env bash
# Installs the Debian packages the tests need, once: PostgreSQL (projection contract tests) and
# Chromium + ChromeDriver (the console's end-to-end tests), openssl (the secured broker's CA and
# certificates; keytool comes with Java). Java 17 is expected on the machine; it is installed too
# when missing.
set -euo pipefail
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
# The schema registry's build (deploy/local/registry.sh) compiles one Java class, and probes with curl.
command -v javac >/dev/null 2>&1 || need+=(openjdk-17-jdk-headless)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if ((${#need[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "system-deps: missing ${need[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "system-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# promtool checks the Prometheus alert rules (deploy/prometheus); not fatal: the tests fall back to
# a schema check without it.
bash "$(dirname "$0")/promtool.sh" >/dev/null || true
