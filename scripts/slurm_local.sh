#!/usr/bin/env bash
# scripts/slurm_local.sh up | down [--purge]
#
# A real single-node SLURM cluster on localhost (slurmctld + slurmd + slurmdbd/MariaDB, Debian's
# slurm-wlm 22.05, no systemd, no cgroups) for the tests marked `slurm`; `.ci/run` brings it up before
# pytest and takes it down in a trap.
#   up     install the Debian packages if missing, write /etc/slurm/{slurm,slurmdbd}.conf, start the
#          daemons (pid files under $SLURM_BASE/run, default /tmp/slurm-local) and wait for an idle node
#   down   cancel the cluster's jobs and stop only the daemons `up` started (--purge: also delete
#          $SLURM_BASE and the generated configs)
# Knobs (SLURM_BASE, SLURM_ACCOUNTING, SLURM_PARTITION, ...) are listed at the top of slurm/up.sh.
# Re-execs itself under sudo when not root. Both commands are idempotent.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in
  up) shift; exec bash "$HERE/slurm/up.sh" "$@" ;;
  down) shift; exec bash "$HERE/slurm/down.sh" "$@" ;;
  *) echo "usage: $0 up | down [--purge]" >&2; exit 2 ;;
esac
