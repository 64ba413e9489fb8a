#!/usr/bin/env bash
# A real, single-node Slurm cluster on localhost, for tests and CI.
#
#   bash slurm/local_cluster.sh start    # install if needed, configure, start everything, wait until usable
#   bash slurm/local_cluster.sh stop     # stop every daemon this script starts
#   bash slurm/local_cluster.sh status   # print state; exit 0 only when the cluster is usable
#
# Must run as root on Debian 12. There is no systemd on the target machines, so this
# script starts each daemon itself: munged, mariadbd, slurmdbd, slurmctld, slurmd.
# See slurm/README.md for why each non-obvious setting is there.
set -euo pipefail

# ---------------------------------------------------------------------------
# Locations and constants
# ---------------------------------------------------------------------------

# Fixed on purpose: slurmctld stores the cluster name in StateSaveLocation and refuses to
# start if it changes, and slurmdbd keys its accounting tables on it.
readonly CLUSTER_NAME="storytune"
readonly PARTITION="debug"

readonly CONF_DIR="/etc/slurm"   # Debian's compiled-in default, so no SLURM_CONF is needed
readonly SLURM_CONF="$CONF_DIR/slurm.conf"
readonly DBD_CONF="$CONF_DIR/slurmdbd.conf"
readonly LOG_DIR="/var/log/slurm"
# Persistent job state. NEVER wiped by this script: purging it resets job ids to 1, and
# submitit folders named by %j then collide with older runs.
readonly CTLD_STATE="/var/spool/slurmctld"
readonly SLURMD_SPOOL="/var/spool/slurmd"
readonly RUN_DIR="/run/slurm"
readonly LOCK_FILE="/run/lock/storytune-local-cluster.lock"

readonly MUNGE_RUN="/run/munge"
readonly MUNGE_PID="$MUNGE_RUN/munged.pid"   # munged's default; Debian's init script agrees
readonly MUNGE_KEY="/etc/munge/munge.key"

readonly MYSQL_RUN="/run/mysqld"
readonly MYSQL_PID="$MYSQL_RUN/mysqld.pid"   # same file Debian's init script would use
readonly MYSQL_DATADIR="/var/lib/mysql"
readonly MYSQL_LOG="/var/log/mysql/mariadbd-local-cluster.log"

readonly CTLD_PID="$RUN_DIR/slurmctld.pid"
readonly SLURMD_PID="$RUN_DIR/slurmd.pid"
readonly DBD_PID="$RUN_DIR/slurmdbd.pid"

# The accounting database. MariaDB listens on 127.0.0.1 only (Debian default) and this is a
# throw-away test cluster, so a fixed password is acceptable.
readonly DB_NAME="slurm_acct_db"
readonly DB_USER="slurm"
readonly DB_PASS="storytune-local-slurmdbd"

readonly APT_PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)

# Seconds to wait for each daemon / the node before giving up.
readonly TIMEOUT="${LOCAL_CLUSTER_TIMEOUT:-60}"

# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

log() { echo "[local_cluster] $*" >&2; }

die() {
    log "ERROR: $*"
    exit 1
}

# Print the last lines of a log file to stderr (used when something fails to come up).
show_log_tail() {
    local file="$1"
    if [[ -r "$file" ]]; then
        log "--- last 30 lines of $file ---"
        tail -n 30 "$file" >&2 || true
        log "--- end of $file ---"
    else
        log "(no log file at $file)"
    fi
}

# True when the pid file names a live process whose command name is $2.
# Checking the name guards against stale pid files whose pid was reused.
pid_alive() {
    local pidfile="$1" name="$2" pid comm
    [[ -s "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" && -r "/proc/$pid/comm" ]] || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [[ "$comm" == "$name" ]]
}

# wait_until DESCRIPTION LOGFILE PROCNAME COMMAND...: poll COMMAND until it succeeds or
# TIMEOUT passes. When PROCNAME is not "-", give up at once (after a 1 s grace period for
# forking) if no process of that name is left: a daemon that died on a fatal error will
# never answer, and its log says why.
wait_until() {
    local what="$1" logfile="$2" procname="$3"
    shift 3
    local start=$SECONDS deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if [[ "$procname" != - ]] && ((SECONDS - start >= 1)) && ! pgrep -x "$procname" >/dev/null; then
            log "$procname exited while waiting for $what"
            show_log_tail "$logfile"
            die "$what did not come up"
        fi
        if ((SECONDS >= deadline)); then
            log "timed out after ${TIMEOUT}s waiting for $what"
            show_log_tail "$logfile"
            die "$what did not come up"
        fi
        sleep 0.2
    done
}

# stop_daemons NAME PIDFILE [NAME PIDFILE...]: SIGTERM (a clean shutdown for every daemon
# here) to all of them at once, then wait for all; SIGKILL only as a last resort.
# Each daemon takes 1-2 s to exit, so signalling independent ones together saves time.
stop_daemons() {
    local pids=() names=() pid i
    while (($# >= 2)); do
        if pid_alive "$2" "$1"; then
            pid="$(tr -dc '0-9' <"$2")"
            log "stopping $1 (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$1")
        fi
        shift 2
    done
    for ((i = 0; i < 150; i++)); do  # up to 30 s
        local alive=0
        for pid in "${pids[@]}"; do
            [[ -d "/proc/$pid" ]] && alive=1
        done
        ((alive)) || return 0
        sleep 0.2
    done
    for i in "${!pids[@]}"; do
        if [[ -d "/proc/${pids[$i]}" ]]; then
            log "${names[$i]} did not exit after 30 s; sending SIGKILL"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
    done
}

node_name() { hostname -s; }

# ---------------------------------------------------------------------------
# Installation
# ---------------------------------------------------------------------------

package_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

install_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        package_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0

    log "installing ${missing[*]}"
    local t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    # Try with the existing package lists first (saves ~5 s); refresh them only if the
    # install fails, e.g. because the lists are absent or stale.
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/local_cluster-apt.log 2>&1; then
        log "apt-get install failed with current package lists; running apt-get update"
        apt-get update -q >>/tmp/local_cluster-apt.log 2>&1 || {
            show_log_tail /tmp/local_cluster-apt.log
            die "apt-get update failed"
        }
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/local_cluster-apt.log 2>&1 || {
            show_log_tail /tmp/local_cluster-apt.log
            die "apt-get install ${missing[*]} failed"
        }
    fi
    log "packages installed in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

# Node line from the real hardware (`slurmd -C`), with RealMemory lowered to ~98%:
# if slurmd later measures less memory than configured, slurmctld drains the node.
node_line() {
    local line mem
    line="$(slurmd -C 2>/dev/null | grep '^NodeName=' | head -n 1)"
    [[ -n "$line" ]] || die "'slurmd -C' printed no NodeName line"
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")"
    [[ -n "$mem" ]] || die "no RealMemory in: $line"
    line="${line/RealMemory=$mem/RealMemory=$((mem * 98 / 100))}"
    echo "$line NodeAddr=127.0.0.1 State=UNKNOWN"
}

render_slurm_conf() {
    cat <<EOF
# Generated by slurm/local_cluster.sh -- edits are overwritten on the next start.
ClusterName=$CLUSTER_NAME
SlurmctldHost=localhost

# Everything runs as root on these machines; no cgroups and no systemd are available.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Credentials expire after 10 s instead of 120 s: a requeued job waits for its old
# credential to expire before it can start again.
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MailProg=/bin/true
# A node that was DOWN comes back by itself when its slurmd registers with a valid config.
ReturnToService=2

# Scheduler passes every 2 s (defaults: 60 s main pass, 30 s backfill) so requeued and
# pending jobs start within seconds.
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2

StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log

# Accounting through slurmdbd (MariaDB behind it). submitit polls job states with sacct;
# without accounting, job.state stays UNKNOWN and waits/requeues hang or take minutes.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none

$(node_line)
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

render_slurmdbd_conf() {
    cat <<EOF
# Generated by slurm/local_cluster.sh -- edits are overwritten on the next start.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$DBD_PID
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

# install_if_changed FILE MODE: replace FILE with stdin when the content differs.
# Returns 0 when the file changed, 1 when it was already up to date.
install_if_changed() {
    local file="$1" mode="$2" tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    if [[ -f "$file" ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    install -m "$mode" -o root -g root "$tmp" "$file"
    rm -f "$tmp"
    log "wrote $file"
    return 0
}

make_dirs() {
    install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$SLURMD_SPOOL" "$RUN_DIR"
    install -d -m 0700 "$CTLD_STATE"
    install -d -m 0755 -o munge -g munge "$MUNGE_RUN"
    install -d -m 0755 -o mysql -g mysql "$MYSQL_RUN" /var/log/mysql
}

# Writes both config files. Sets CONFIG_CHANGED=1 when either file changed (for example a
# new hostname or memory size), so running daemons can be restarted to pick it up.
CONFIG_CHANGED=0
write_configs() {
    if render_slurm_conf | install_if_changed "$SLURM_CONF" 0644; then CONFIG_CHANGED=1; fi
    # slurmdbd refuses a config readable by others: it holds the DB password.
    if render_slurmdbd_conf | install_if_changed "$DBD_CONF" 0600; then CONFIG_CHANGED=1; fi
    return 0
}

# ---------------------------------------------------------------------------
# Daemons, in dependency order
# ---------------------------------------------------------------------------

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if pid_alive "$MUNGE_PID" munged && munge_works; then return 0; fi
    if [[ ! -s "$MUNGE_KEY" ]]; then  # Debian's postinst normally creates it
        log "creating $MUNGE_KEY"
        mungekey --create --keyfile="$MUNGE_KEY"
        chown munge:munge "$MUNGE_KEY"
        chmod 0400 "$MUNGE_KEY"
    fi
    log "starting munged"
    # --force: munged otherwise refuses to start over a leftover socket or lax directory
    # permissions, both common in containers.
    runuser -u munge -- /usr/sbin/munged --force 9>&-
    wait_until "munged" /var/log/munge/munged.log munged munge_works
}

mariadb_works() { mariadb-admin --protocol=socket ping >/dev/null 2>&1; }

start_mariadb() {
    if mariadb_works; then return 0; fi
    if [[ ! -d "$MYSQL_DATADIR/mysql" ]]; then  # Debian's postinst normally does this
        log "initialising MariaDB data directory"
        mariadb-install-db --user=mysql --datadir="$MYSQL_DATADIR" >>"$MYSQL_LOG" 2>&1
    fi
    log "starting mariadbd"
    # mariadbd does not daemonize itself; setsid -f detaches it from this shell's session
    # so it outlives the calling job (CI step, test runner, terminal).
    setsid -f /usr/sbin/mariadbd --user=mysql --pid-file="$MYSQL_PID" \
        </dev/null >>"$MYSQL_LOG" 2>&1 9>&-
    wait_until "mariadbd" "$MYSQL_LOG" mariadbd mariadb_works
}

# Idempotent: IF NOT EXISTS everywhere, so it is safe (and cheap) on every start.
create_accounting_db() {
    mariadb --protocol=socket -u root <<SQL
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
SQL
}

slurmdbd_works() { sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }

start_slurmdbd() {
    if pid_alive "$DBD_PID" slurmdbd && slurmdbd_works; then return 0; fi
    log "starting slurmdbd"
    slurmdbd 9>&-
    wait_until "slurmdbd" "$LOG_DIR/slurmdbd.log" slurmdbd slurmdbd_works
}

register_cluster() {
    if sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then return 0; fi
    log "registering cluster $CLUSTER_NAME with slurmdbd"
    sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
}

slurmctld_works() { scontrol ping 2>/dev/null | grep -q "is UP"; }

start_slurmctld() {
    if pid_alive "$CTLD_PID" slurmctld && slurmctld_works; then return 0; fi
    log "starting slurmctld"
    # No -c: that would clear the saved state and reset job ids.
    slurmctld 9>&-
    wait_until "slurmctld" "$LOG_DIR/slurmctld.log" slurmctld slurmctld_works
}

start_slurmd() {
    if pid_alive "$SLURMD_PID" slurmd; then return 0; fi
    log "starting slurmd"
    slurmd 9>&-
}

# Restart the Slurm daemons so they read a changed slurm.conf/slurmdbd.conf.
restart_slurm_daemons_if_config_changed() {
    ((CONFIG_CHANGED)) || return 0
    if pid_alive "$SLURMD_PID" slurmd || pid_alive "$CTLD_PID" slurmctld || pid_alive "$DBD_PID" slurmdbd; then
        log "configuration changed; restarting the Slurm daemons"
        stop_slurm_daemons
    fi
}

stop_slurm_daemons() {
    stop_daemons slurmd "$SLURMD_PID" slurmctld "$CTLD_PID"
    # After slurmctld, which sends its last accounting records to slurmdbd on the way out.
    stop_daemons slurmdbd "$DBD_PID"
}

# ---------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------

# Compact node state, e.g. "idle", "mix", "alloc", "down*", "drain".
node_state() { sinfo -h -N -n "$(node_name)" -o '%t' 2>/dev/null | head -n 1; }

# Usable: responding (no '*' suffix) and able to take or running jobs.
node_usable() {
    case "$(node_state)" in
        idle | mix | alloc | comp) return 0 ;;
        *) return 1 ;;
    esac
}

sacct_works() {
    # sacct prints an error and exits non-zero when slurmdbd does not answer.
    sacct -n -X -o JobID --starttime=now-1minutes >/dev/null 2>&1
}

# A node left DOWN/DRAINED (e.g. by an earlier crash or a manual drain) is put back in
# service: on a local test cluster there is never a reason to keep it out.
# Returns 0 when it sent the resume.
resume_node_if_down() {
    local state
    state="$(node_state)"
    case "$state" in
        down | drain | drng | fail | failg)
            log "node $(node_name) is '$state'; resuming it"
            scontrol update NodeName="$(node_name)" State=RESUME >/dev/null 2>&1 || true
            return 0
            ;;
    esac
    return 1
}

wait_for_node() {
    local deadline=$((SECONDS + TIMEOUT)) resumed=0
    until node_usable; do
        # Resume at most once, and only once slurmd has registered (no '*' suffix):
        # before that, DOWN just means "not heard from yet".
        if ((!resumed)) && [[ "$(node_state)" != *'*' ]] && resume_node_if_down; then
            resumed=1
        fi
        if ((SECONDS >= deadline)) || ! pgrep -x slurmd >/dev/null; then
            log "node state: '$(node_state)'"
            sinfo -N -l >&2 || true
            show_log_tail "$LOG_DIR/slurmd.log"
            show_log_tail "$LOG_DIR/slurmctld.log"
            die "node $(node_name) did not become usable (slurmd died, or more than ${TIMEOUT}s passed)"
        fi
        sleep 0.2
    done
}

# Cheap pid checks first, so an obviously stopped cluster is reported at once.
cluster_healthy() {
    pid_alive "$DBD_PID" slurmdbd && pid_alive "$CTLD_PID" slurmctld && pid_alive "$SLURMD_PID" slurmd &&
        munge_works && mariadb_works && slurmctld_works && node_usable && sacct_works
}

# ---------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------

require_root() { [[ "$(id -u)" == 0 ]] || die "must run as root (daemons run as root here)"; }

# Serialise start/stop (e.g. CI and a test fixture both calling start) with a lock on fd 9.
# Every daemon is launched with "9>&-" so it does not inherit, and so hold, the lock.
take_lock() {
    mkdir -p "$(dirname "$LOCK_FILE")"
    exec 9>"$LOCK_FILE"
    flock -w 300 9 || die "another local_cluster.sh start/stop still holds $LOCK_FILE after 300 s"
}

cmd_start() {
    require_root
    take_lock
    local t0_ns
    t0_ns="$(date +%s%N)"
    install_packages
    make_dirs
    write_configs
    restart_slurm_daemons_if_config_changed
    start_munge
    start_mariadb
    create_accounting_db
    start_slurmdbd
    register_cluster
    start_slurmctld
    start_slurmd
    wait_for_node
    wait_until "sacct to answer" "$LOG_DIR/slurmdbd.log" slurmdbd sacct_works
    local ms=$((($(date +%s%N) - t0_ns) / 1000000))
    log "cluster '$CLUSTER_NAME' is up (node $(node_name), partition $PARTITION) in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"
}

cmd_stop() {
    require_root
    take_lock
    # Reverse dependency order: Slurm first, then its database, then authentication.
    stop_slurm_daemons
    if mariadb_works || pid_alive "$MYSQL_PID" mariadbd; then
        log "stopping mariadbd"
        # Waits until the server has shut down.
        mariadb-admin --protocol=socket shutdown >/dev/null 2>&1 || true
        stop_daemons mariadbd "$MYSQL_PID"  # fallback if the client could not connect
    fi
    stop_daemons munged "$MUNGE_PID"
    log "stopped"
}

daemon_line() {
    local name="$1" pidfile="$2"
    if pid_alive "$pidfile" "$name"; then
        printf '  %-10s running (pid %s)\n' "$name" "$(tr -dc '0-9' <"$pidfile")"
    else
        printf '  %-10s not running\n' "$name"
    fi
}

cmd_status() {
    if ! command -v sinfo >/dev/null 2>&1; then
        echo "Slurm is not installed (no sinfo on PATH); run: bash slurm/local_cluster.sh start"
        return 1
    fi
    echo "daemons:"
    daemon_line munged "$MUNGE_PID"
    daemon_line mariadbd "$MYSQL_PID"
    daemon_line slurmdbd "$DBD_PID"
    daemon_line slurmctld "$CTLD_PID"
    daemon_line slurmd "$SLURMD_PID"
    # Only ask slurmctld when it runs: otherwise sinfo retries for ~10 s before failing.
    if pid_alive "$CTLD_PID" slurmctld; then
        echo "sinfo:"
        sinfo 2>&1 | sed 's/^/  /' || true
    fi
    if cluster_healthy; then
        echo "healthy: yes"
        return 0
    fi
    echo "healthy: no"
    return 1
}

main() {
    case "${1:-}" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        *)
            echo "usage: $0 {start|stop|status}" >&2
            exit 2
            ;;
    esac
}

main "$@"
