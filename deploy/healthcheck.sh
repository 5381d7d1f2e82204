#!/bin/bash
# Container health check for gatehouse: GET /healthz on the admin listener,
# healthy on "200". Needs no curl: bash's /dev/tcp does the connecting.
#
# The admin address comes from the config (admin.address); this script only
# knows where to look through the environment:
#   GATEHOUSE_HEALTHCHECK_HOST  default 127.0.0.1
#   GATEHOUSE_HEALTHCHECK_PORT  default 9901
# A config without an admin section makes the container "unhealthy": add
# one, or run the container with --no-healthcheck.
set -u
host=${GATEHOUSE_HEALTHCHECK_HOST:-127.0.0.1}
port=${GATEHOUSE_HEALTHCHECK_PORT:-9901}

exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3 || exit 1
IFS=' ' read -r -t 4 _version code _reason <&3 || exit 1
exec 3<&-
if [ "$code" = 200 ]; then
    exit 0
fi
echo "gatehouse /healthz answered ${code:-nothing}" >&2
exit 1
