#!/bin/sh
# gatehouse-agent postinst: tell systemd about the units. They are not
# enabled: first put the appliance root in /etc/gatehouse/root.crt and the
# server in /etc/gatehouse/agent.env, then
#   systemctl enable --now gatehouse-enroll.service gatehouse-agent.service
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
fi
