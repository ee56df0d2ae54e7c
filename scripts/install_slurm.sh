#!/usr/bin/env bash
# Install Debian's Slurm (slurmctld, slurmd, client tools), munge and iproute2 (`ip`: the emulated
# multi-node cluster's network namespaces), for the real-Slurm tests.
# Idempotent: does nothing when the binaries are already there. Only tried as root with apt-get;
# otherwise it says why and exits 0 (the Slurm tests then skip with the same reason).
# Daemons are not started here (no systemd needed): tests/slurm_cluster.py starts them per test session.
set -euo pipefail

need=(sbatch srun scontrol squeue scancel sacct slurmctld slurmd munged ip nsenter unshare)
missing=()
for b in "${need[@]}"; do command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_slurm.sh: not root or no apt-get; not installing Slurm (missing: ${missing[*]}). The Slurm tests will skip." >&2
  exit 0
fi
echo "install_slurm.sh: installing slurmctld slurmd slurm-client munge iproute2 util-linux (missing: ${missing[*]})" >&2
export DEBIAN_FRONTEND=noninteractive
# Packages' postinst would try to start services; there is no init system to start them with here.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1; fi
trap 'if [ $made_policy = 1 ]; then rm -f "$policy"; fi' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge iproute2 util-linux >/dev/null
for b in "${need[@]}"; do
  command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || { echo "install_slurm.sh: $b still missing after install" >&2; exit 1; }
done
echo "install_slurm.sh: installed Slurm $(dpkg-query -W -f '${Version}' slurm-client)" >&2
