#!/bin/sh
# gatehouse postinst: the service user, then tell systemd about the unit.
# The node is not started: it needs `gatehouse init` (or a join) first.
set -e
if [ "$1" = configure ]; then
  if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers /usr/lib/sysusers.d/gatehouse.conf
  elif ! getent passwd gatehouse >/dev/null; then
    adduser --system --group --home /var/lib/gatehouse --no-create-home --shell /usr/sbin/nologin gatehouse
  fi
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
fi
