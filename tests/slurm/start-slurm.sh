#!/usr/bin/env bash
# Brings up a single-node Slurm cluster on this machine for the tests: munged, slurmctld and
# slurmd, one partition `ci`, four fake GPUs (gres type `fake`, stand-in device files). Idempotent:
# when the cluster in $SLURM_CI_DIR already answers, it does nothing. Needs root and the
# Debian packages slurm-wlm and munge (scripts/install-deps.sh installs them).
#
# The container-friendly choices (no cgroup delegation, no systemd): proctrack/linuxproc,
# task/none, no accounting. Prints the path of the slurm.conf to use (SLURM_CONF) last.
set -euo pipefail
dir="${SLURM_CI_DIR:-/tmp/reelspool-slurm-ci}"
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"
mkdir -p "$dir"
# Tests run in parallel processes and each calls this script: one bring-up at a time.
exec 9>"$dir.lock"
flock 9
for tool in munged mungekey slurmctld slurmd sbatch squeue scontrol; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "start-slurm: $tool not found; install slurm-wlm and munge (scripts/install-deps.sh)" >&2
    exit 2
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "start-slurm: must run as root (slurmd starts jobs as their users)" >&2
  exit 2
fi
if [ -f "$conf" ] && timeout 5 scontrol ping 2>/dev/null | grep -q "is UP" \
  && timeout 5 sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
  echo "$conf"
  exit 0
fi
host="$(hostname -s)"
mkdir -p "$dir/state" "$dir/spool" "$dir/log" /run/munge /var/log/munge /var/lib/munge
# munge: a key, then the daemon (once).
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key --force
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c "munged --force" 9>&- || munged --force 9>&-
  else
    munged --force 9>&-
  fi
  for _ in $(seq 1 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
# More CPUs than the machine has (config_overrides lets slurmd accept that): the tests run
# several small jobs side by side, each asking for one CPU.
cpus=8
mem_mb="$(awk '/MemTotal/ { printf "%d", $2 / 1024 / 2 }' /proc/meminfo)"
cat >"$conf" <<CONF
ClusterName=reelspoolci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=${SLURM_CI_CTLD_PORT:-6917}
SlurmdPort=${SLURM_CI_SLURMD_PORT:-6918}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
GresTypes=gpu
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=10
SlurmdTimeout=10
SlurmdParameters=config_overrides
MessageTimeout=5
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
JobRequeue=1
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host CPUs=$cpus RealMemory=$mem_mb Gres=gpu:fake:4 State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
# Typed GPUs need device files: two character devices like /dev/null stand in for
# /dev/nvidia0 to /dev/nvidia3.
mkdir -p "$dir/dev"
for n in 0 1 2 3; do
  [ -c "$dir/dev/fake-gpu$n" ] || mknod "$dir/dev/fake-gpu$n" c 1 3 2>/dev/null \
    || ln -sfn /dev/null "$dir/dev/fake-gpu$n"
done
cat >"$dir/gres.conf" <<CONF
AutoDetect=off
NodeName=$host Name=gpu Type=fake File=$dir/dev/fake-gpu[0-3]
CONF
# Debian's tools read /etc/slurm/slurm.conf unless SLURM_CONF says otherwise; the daemons get
# -f, the clients SLURM_CONF (the tests pass it on).
if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
  kill "$(cat "$dir/slurmctld.pid")" || true
  sleep 1
fi
if [ -f "$dir/slurmd.pid" ] && kill -0 "$(cat "$dir/slurmd.pid")" 2>/dev/null; then
  kill "$(cat "$dir/slurmd.pid")" || true
  sleep 1
fi
slurmctld -f "$conf" -i 9>&-
slurmd -f "$conf" 9>&-
for _ in $(seq 1 100); do
  if timeout 5 sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
    echo "$conf"
    exit 0
  fi
  # A node that came back DOWN after a restart: return it to service.
  timeout 5 scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 0.3
done
echo "start-slurm: the node did not come up; logs in $dir/log" >&2
tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
exit 1
