#!/bin/sh
# gatehouse prerm: stop and disable the node on removal (not on upgrade).
# Its data (/var/lib/gatehouse: the CA, the registry) is never deleted here,
# not even on purge: it is the cluster's state, not the package's.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl disable --now gatehouse.service >/dev/null 2>&1 || true
fi
