#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, from Debian's packages, for trying `--executor slurm`
# (and the slow test that submits through it) without a real cluster. Needs root.
#   apt-get install -y slurm-wlm munge && bash scripts/slurm-single-node.sh
# Stop it with: bash scripts/slurm-single-node.sh stop
set -euo pipefail

if [[ "${1:-}" == "stop" ]]; then
    pkill -x slurmd || true
    pkill -x slurmctld || true
    pkill -x munged || true
    exit 0
fi

for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found; apt-get install -y slurm-wlm munge" >&2; exit 1; }
done

host=$(hostname -s)
# The node's own description (CPUs, sockets, memory) as slurmd sees it, so the cluster offers
# exactly this machine.
node=$(slurmd -C | head -n 1)

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=hymba-bench
SlurmctldHost=${host}
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
# No cgroups inside containers: track processes by their parent, bind nothing. Cores are the
# only consumable, so jobs that do not ask for memory still share the node.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
${node} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

[[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || munged --force
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 30); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "error: the node did not come up; see /var/log/slurm/" >&2
exit 1
