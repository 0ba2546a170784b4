#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine, for the `-m slurm` integration tests.
#
#   tests/integration/slurm/cluster.sh up       install what is missing, start the daemons, wait for an idle node
#   tests/integration/slurm/cluster.sh down     cancel the cluster's jobs, stop exactly the daemons `up` started
#   tests/integration/slurm/cluster.sh status   print the PIDs, `sinfo` and `squeue`
#
# Why a script of our own: the tests must run against a real slurmctld/slurmd (requeue, job states, srun
# with several tasks), but CI machines start bare and have no systemd. Everything lives under one state
# folder (CONTAINER_SSL_SLURM_DIR, default /tmp/container-ssl-slurm) that is kept between `down` and `up`,
# so job ids keep increasing and the accounting database never sees the same id twice. Only loopback
# addresses are used. Accounting (slurmdbd + MariaDB) is on by default because submitit reads job states
# through `sacct`; CONTAINER_SSL_SLURM_ACCOUNTING=0 skips it.
#
# Needs root (daemons run as root, munged as the munge user). Ports: CONTAINER_SSL_SLURM_PORT_BASE (default
# 6817: slurmctld, +1 slurmd, +2 slurmdbd) and CONTAINER_SSL_SLURM_DB_PORT (default 3306).
set -euo pipefail

STATE=${CONTAINER_SSL_SLURM_DIR:-/tmp/container-ssl-slurm}
ACCOUNTING=${CONTAINER_SSL_SLURM_ACCOUNTING:-1}
PORT_BASE=${CONTAINER_SSL_SLURM_PORT_BASE:-6817}
DB_PORT=${CONTAINER_SSL_SLURM_DB_PORT:-3306}
CLUSTER=containerssl
PARTITION=debug
ETC_CONF=/etc/slurm/slurm.conf
PIDS="$STATE/pids"
HOST=$(hostname -s)
export SLURM_CONF="$STATE/slurm.conf"

say() { echo "cluster.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# ------------------------------------------------------------------------------------------- helpers
alive() {  # alive PID NAME: the process exists and its command name starts with NAME (no PID reuse mix-ups)
    [[ -r /proc/$1/comm ]] && [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2"* ]]
}

record() { echo "$1 $2" >>"$PIDS"; }  # record NAME PID

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.2 s
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
    say "$what ready"
}

node_idle() { sinfo -h -N -o %t 2>/dev/null | grep -qx 'idle'; }

install_packages() {
    local need=()
    command -v slurmctld >/dev/null || need+=(slurmctld)
    command -v slurmd >/dev/null || need+=(slurmd)
    command -v sbatch >/dev/null || need+=(slurm-client)
    command -v munged >/dev/null || need+=(munge)
    local dbneed=()
    if [[ $ACCOUNTING == 1 ]]; then
        command -v slurmdbd >/dev/null || dbneed+=(slurmdbd)
        command -v mariadbd >/dev/null || dbneed+=(mariadb-server)
    fi
    ((${#need[@]} + ${#dbneed[@]})) || return 0
    say "installing ${need[*]} ${dbneed[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    ((${#need[@]} == 0)) || apt-get install -y -qq "${need[@]}" >/dev/null
    ((${#dbneed[@]} == 0)) || apt-get install -y -qq --no-install-recommends "${dbneed[@]}" >/dev/null
}

start_detached() {  # start_detached NAME LOGFILE COMMAND...: own session, no terminal; records the PID
    local name=$1 logfile=$2
    shift 2
    setsid "$@" </dev/null >>"$logfile" 2>&1 &
    record "$name" $!
}

# -------------------------------------------------------------------------------------------- munge
start_munge() {
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged already running (not ours: left alone)"
        return
    fi
    # setpriv execs (no fork), so the recorded PID is munged itself
    start_detached munged "$STATE/log/munged.log" \
        setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground
    wait_for 20 munge sh -c 'munge -n | unmunge' || die "munged did not start; see $STATE/log/munged.log"
}

# ----------------------------------------------------------------------------------------- accounting
start_mariadb() {
    local data="$STATE/mysql" run="$STATE/mysqld"
    mkdir -p "$run" && chown mysql:mysql "$run"
    if [[ ! -d $data/mysql ]]; then
        mkdir -p "$data" && chown mysql:mysql "$data"
        mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=socket \
            --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $STATE/log"
    fi
    start_detached mariadbd "$STATE/log/mariadbd.log" \
        mariadbd --user=mysql --datadir="$data" --socket="$run/mysqld.sock" --pid-file="$run/mysqld.pid" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$run/error.log" --innodb-use-native-aio=0
    wait_for 60 mariadb mariadb --socket="$run/mysqld.sock" -e 'SELECT 1' \
        || die "mariadbd did not start; see $run/error.log"
    if [[ ! -s $STATE/dbpass ]]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$STATE/dbpass")
    fi
    local pass
    pass=$(cat "$STATE/dbpass")
    mariadb --socket="$run/mysqld.sock" <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
}

write_slurmdbd_conf() {
    (
        umask 077
        cat >"$STATE/slurmdbd.conf" <<EOF
# written by tests/integration/slurm/cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT_BASE + 2))
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$STATE/dbpass")
StorageLoc=slurm_acct_db
EOF
    )
}

start_slurmdbd() {
    write_slurmdbd_conf
    start_detached slurmdbd "$STATE/log/slurmdbd.out" slurmdbd -D
    wait_for 60 slurmdbd sacctmgr -n list cluster || die "slurmdbd did not answer; see $STATE/log/slurmdbd.log"
}

# ---------------------------------------------------------------------------------------------- slurm
write_slurm_conf() {
    local hw cpus mem
    hw=$(slurmd -C | head -1)                      # NodeName=... CPUs=... RealMemory=...
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    mem=$((mem * 9 / 10))                          # a little below what the node reports
    local topo
    topo=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$hw" || true)
    local acct="AccountingStorageType=accounting_storage/none"
    if [[ $ACCOUNTING == 1 ]]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT_BASE + 2))"
    fi
    cat >"$SLURM_CONF" <<EOF
# written by tests/integration/slurm/cluster.sh
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT_BASE
SlurmdPort=$((PORT_BASE + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# the default (120 s) leaves a requeued job pending for minutes
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=10
MinJobAge=600
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$acct
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus $topo RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

link_etc_conf() {  # clients (sbatch, sinfo, scontrol inside jobs) read /etc/slurm/slurm.conf
    mkdir -p /etc/slurm
    if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$SLURM_CONF" ]]; then
        return
    fi
    [[ -e $ETC_CONF || -L $ETC_CONF ]] && die "$ETC_CONF exists and is not ours; move it away or use SLURM_CONF"
    ln -s "$SLURM_CONF" "$ETC_CONF"
}

# --------------------------------------------------------------------------------------------- up/down
is_up() {
    [[ -s $PIDS ]] || return 1
    local name pid
    while read -r name pid; do
        alive "$pid" "$name" || return 1
    done <"$PIDS"
    sinfo -h >/dev/null 2>&1
}

up() {
    [[ $(id -u) == 0 ]] || die "must run as root (the daemons run as root; munged as the munge user)"
    if is_up; then
        say "already up ($(tr '\n' ' ' <"$PIDS"))"
        return 0
    fi
    [[ -s $PIDS ]] && down   # a half-started cluster from before: stop what is left of it
    install_packages
    getent hosts "$HOST" >/dev/null || say "warning: host name $HOST does not resolve; multi-task jobs need it (add it to /etc/hosts)"
    mkdir -p "$STATE"/{ctld,d,log,run}
    : >"$PIDS"
    write_slurm_conf
    link_etc_conf
    start_munge
    if [[ $ACCOUNTING == 1 ]]; then
        start_mariadb
        start_slurmdbd
    fi
    start_detached slurmctld "$STATE/log/slurmctld.out" slurmctld -D
    wait_for 30 slurmctld scontrol ping || die "slurmctld did not answer; see $STATE/log/slurmctld.log"
    start_detached slurmd "$STATE/log/slurmd.out" slurmd -D
    if ! wait_for 60 "node $HOST idle" node_idle; then
        sinfo -N -l >&2 || true
        die "the node did not become idle; see $STATE/log/slurmd.log"
    fi
    say "up: partition $PARTITION, node $HOST, state in $STATE"
}

stop_pid() {  # stop_pid NAME PID: TERM, wait up to 15 s, then KILL
    local name=$1 pid=$2
    alive "$pid" "$name" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 75); do
        alive "$pid" "$name" || return 0
        sleep 0.2
    done
    say "$name ($pid) ignored SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

down() {
    if [[ ! -s $PIDS ]]; then
        say "not up (no $PIDS)"
        return 0
    fi
    # jobs of this cluster first: slurmstepd and the job processes outlive slurmd otherwise
    if sinfo -h >/dev/null 2>&1; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            wait_for 30 "job cancellation" sh -c '[ -z "$(squeue -h -o %i)" ]' || say "jobs still listed: $jobs"
        fi
    fi
    local order=(slurmd slurmctld slurmdbd mariadbd munged) name pid
    for want in "${order[@]}"; do
        while read -r name pid; do
            [[ $name == "$want" ]] && stop_pid "$name" "$pid"
        done <"$PIDS"
    done
    rm -f "$PIDS"
    if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$SLURM_CONF" ]]; then
        rm -f "$ETC_CONF"
    fi
    say "down"
}

status() {
    if is_up; then
        echo "up: $(tr '\n' ' ' <"$PIDS")"
        sinfo
        squeue
    else
        echo "down"
        return 1
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: $0 up|down|status" ;;
esac
