#!/bin/sh
# gatehouse-agent prerm: stop and disable the units on removal. The device
# identity in /var/lib/gatehouse stays (its keys are useless off this TPM).
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl disable --now gatehouse-agent.service gatehouse-enroll.service >/dev/null 2>&1 || true
fi
