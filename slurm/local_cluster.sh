#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for the tests of seq2seq_es.slurm.
#
#   slurm/local_cluster.sh start    install what is missing, write the config, start munged (unless one
#                                   already answers), slurmctld and two slurmd (node1, node2); wait
#                                   until both nodes are up. Already running (jobs or not): says so
#                                   and succeeds.
#   slurm/local_cluster.sh stop     cancel every job of this cluster, stop exactly the daemons that
#                                   `start` recorded in its pid files, then any process left over from
#                                   them (job steps), and undo the /etc edits that `start` made.
#   slurm/local_cluster.sh status   daemons with their pids, then sinfo and squeue.
#
# Environment:
#   SEQ2SEQ_ES_SLURM_DIR        state folder (config, pid files, logs, spool); default /tmp/seq2seq-es-slurm
#   SEQ2SEQ_ES_SLURM_PORT       slurmctld port; the nodes use the next two; default 17000
#   SEQ2SEQ_ES_SLURM_CPUS       CPUs per node; default 1 (two nodes on a two-core machine)
#   SEQ2SEQ_ES_SLURM_MEM_MB     RealMemory per node in MB; default 8000
#   SEQ2SEQ_ES_SLURM_TIMEOUT_S  how long `start` waits for the nodes; default 90
#
# Client commands (sinfo, sbatch, submitit) find the config through SLURM_CONF=<state>/etc/slurm.conf;
# when /etc/slurm/slurm.conf does not exist, `start` also links it there (and `stop` removes the link)
# so that plain `sinfo` works.
set -euo pipefail

STATE_DIR="${SEQ2SEQ_ES_SLURM_DIR:-/tmp/seq2seq-es-slurm}"
CTLD_PORT="${SEQ2SEQ_ES_SLURM_PORT:-17000}"
NODE_CPUS="${SEQ2SEQ_ES_SLURM_CPUS:-1}"
NODE_MEM_MB="${SEQ2SEQ_ES_SLURM_MEM_MB:-8000}"
START_TIMEOUT_S="${SEQ2SEQ_ES_SLURM_TIMEOUT_S:-90}"

NODES=(node1 node2)
CONF="$STATE_DIR/etc/slurm.conf"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
SYSTEM_CONF=/etc/slurm/slurm.conf
HOSTS_FILE=/etc/hosts
HOSTS_MARK="# seq2seq-es local slurm"
MUNGE_KEY=/etc/munge/munge.key
MUNGE_SOCKET_DIR=/run/munge
# Every daemon started here carries this variable; slurmstepd inherits it from slurmd, so `stop`
# can find job-step leftovers of this cluster and of no other.
MARK_VAR=SEQ2SEQ_ES_LOCAL_SLURM
export SLURM_CONF="$CONF"

log() { printf 'local_cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pid_file() { printf '%s/%s.pid\n' "$RUN_DIR" "$1"; }

# A process that exited but was not reaped yet (a zombie) counts as gone: where pid 1 does not
# reap orphans promptly, kill -0 alone would report the stopped daemons alive.
alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != Z ]]
}

# Prints the pid recorded for a daemon when that process is alive, else nothing.
live_pid() {
    local file pid
    file="$(pid_file "$1")"
    [[ -s "$file" ]] || return 0
    pid="$(<"$file")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid"; then
        printf '%s\n' "$pid"
    fi
}

need_root() {
    [[ "$(id -u)" -eq 0 ]] || die "$1 needs root (run it as root, as CI does)"
}

install_missing() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sinfo >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    need_root "installing ${missing[*]}"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

add_hosts_entry() {
    local node missing=()
    for node in "${NODES[@]}"; do
        getent hosts "$node" >/dev/null || missing+=("$node")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    need_root "adding ${missing[*]} to $HOSTS_FILE"
    printf '127.0.0.1 %s %s\n' "${missing[*]}" "$HOSTS_MARK" >>"$HOSTS_FILE"
}

remove_hosts_entry() {
    grep -qF "$HOSTS_MARK" "$HOSTS_FILE" 2>/dev/null || return 0
    local kept
    kept="$(grep -vF "$HOSTS_MARK" "$HOSTS_FILE" || true)"
    # Rewrite in place: /etc/hosts is often a bind mount that cannot be replaced by a rename.
    printf '%s\n' "$kept" >"$HOSTS_FILE"
}

munge_answers() {
    command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

start_munge() {
    if [[ -n "$(live_pid munged)" ]] || munge_answers; then
        return 0
    fi
    if [[ ! -s "$MUNGE_KEY" ]]; then
        need_root "creating $MUNGE_KEY"
        mungekey -c -k "$MUNGE_KEY"
    fi
    # munged refuses a key or socket folder that others could write; give them to the munge user.
    if id munge >/dev/null 2>&1; then
        chown munge:munge "$MUNGE_KEY"
        chmod 0400 "$MUNGE_KEY"
        mkdir -p "$MUNGE_SOCKET_DIR"
        chown munge:munge "$MUNGE_SOCKET_DIR"
        chmod 0755 "$MUNGE_SOCKET_DIR"
    fi
    local user_args=()
    if [[ "$(id -u)" -eq 0 ]] && id munge >/dev/null 2>&1; then
        user_args=(runuser -u munge --)
    fi
    # munged writes its pid file itself, as the munge user: give it a folder it may write.
    local munge_run="$RUN_DIR/munge"
    mkdir -p "$munge_run"
    [[ ${#user_args[@]} -gt 0 ]] && chown munge:munge "$munge_run"
    env "$MARK_VAR=$STATE_DIR" "${user_args[@]}" munged \
        --pid-file="$munge_run/munged.pid" --log-file="$munge_run/munged.log" \
        --seed-file="$munge_run/munged.seed"
    wait_for "munged to answer" 20 munge_answers
    cp "$munge_run/munged.pid" "$(pid_file munged)"
}

write_conf() {
    local host
    host="$(hostname -s)"
    mkdir -p "$STATE_DIR/etc" "$STATE_DIR/state" "$RUN_DIR" "$LOG_DIR"
    local node port=$((CTLD_PORT + 1))
    for node in "${NODES[@]}"; do
        mkdir -p "$STATE_DIR/spool/$node"
    done
    {
        printf '# Written by slurm/local_cluster.sh; rewritten on every start.\n'
        printf 'ClusterName=seq2seqes\n'
        printf 'SlurmctldHost=%s(127.0.0.1)\n' "$host"
        printf 'SlurmctldPort=%s\n' "$CTLD_PORT"
        printf 'SlurmUser=root\nSlurmdUser=root\n'
        printf 'AuthType=auth/munge\nCredType=cred/munge\n'
        printf 'StateSaveLocation=%s/state\n' "$STATE_DIR"
        printf 'SlurmdSpoolDir=%s/spool/%%n\n' "$STATE_DIR"
        printf 'SlurmctldPidFile=%s/slurmctld.pid\n' "$RUN_DIR"
        printf 'SlurmdPidFile=%s/slurmd-%%n.pid\n' "$RUN_DIR"
        printf 'SlurmctldLogFile=%s/slurmctld.log\n' "$LOG_DIR"
        printf 'SlurmdLogFile=%s/slurmd-%%n.log\n' "$LOG_DIR"
        printf 'ProctrackType=proctrack/linuxproc\n'
        printf 'TaskPlugin=task/none\n'
        printf 'SelectType=select/cons_tres\n'
        printf 'SelectTypeParameters=CR_CPU\n'
        printf 'SchedulerType=sched/backfill\n'
        printf 'MpiDefault=none\n'
        printf 'JobAcctGatherType=jobacct_gather/none\n'
        printf 'AccountingStorageType=accounting_storage/none\n'
        # Requeue on, and short kill/return delays so requeued jobs restart within seconds.
        printf 'JobRequeue=1\n'
        printf 'KillWait=5\n'
        printf 'MinJobAge=600\n'
        printf 'ReturnToService=2\n'
        printf 'SlurmctldTimeout=30\nSlurmdTimeout=30\nInactiveLimit=0\nWaittime=0\n'
        # The nodes claim less than the machine has; let their configured size win over detection.
        printf 'SlurmdParameters=config_overrides\n'
        for node in "${NODES[@]}"; do
            printf 'NodeName=%s NodeHostname=%s NodeAddr=127.0.0.1 Port=%s CPUs=%s RealMemory=%s State=UNKNOWN\n' \
                "$node" "$host" "$port" "$NODE_CPUS" "$NODE_MEM_MB"
            port=$((port + 1))
        done
        printf 'PartitionName=debug Nodes=%s Default=YES MaxTime=INFINITE State=UP\n' "$(IFS=,; echo "${NODES[*]}")"
    } >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    link_system_conf
}

link_system_conf() {
    if [[ -L "$SYSTEM_CONF" && "$(readlink "$SYSTEM_CONF")" == "$CONF" ]]; then
        return 0
    fi
    if [[ -e "$SYSTEM_CONF" || -L "$SYSTEM_CONF" ]]; then
        log "$SYSTEM_CONF belongs to another setup; clients need SLURM_CONF=$CONF"
        return 0
    fi
    if [[ -w "$(dirname "$SYSTEM_CONF")" ]] || { [[ "$(id -u)" -eq 0 ]] && mkdir -p "$(dirname "$SYSTEM_CONF")"; }; then
        ln -s "$CONF" "$SYSTEM_CONF"
    fi
}

unlink_system_conf() {
    if [[ -L "$SYSTEM_CONF" && "$(readlink "$SYSTEM_CONF")" == "$CONF" ]]; then
        rm -f "$SYSTEM_CONF"
    fi
}

# Polls a command until it succeeds: wait_for DESCRIPTION SECONDS COMMAND [ARGS...]
wait_for() {
    local what="$1" seconds="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${seconds}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

start_daemon() {
    local name="$1"
    shift
    [[ -n "$(live_pid "$name")" ]] && return 0
    rm -f "$(pid_file "$name")"
    # The daemons fork into the background and write their own pid files (paths in slurm.conf).
    env "$MARK_VAR=$STATE_DIR" "$@"
    wait_for "$name to write its pid file" 20 test -s "$(pid_file "$name")"
}

# True when every node answers and is up: idle, or running, finishing or planned for jobs (sinfo's
# short state, whatever flag it carries, e.g. "mix-" or "idle@"). A node that does not respond
# ("*"), or that is down, drained or failed, is not up.
nodes_up() {
    local states node state
    states="$(sinfo -h -N -o '%N %t' 2>/dev/null)" || return 1
    for node in "${NODES[@]}"; do
        state="$(awk -v n="$node" '$1 == n { print $2; exit }' <<<"$states")"
        case "$state" in
            *'*'*) return 1 ;;
            idle* | mix* | alloc* | comp* | plnd* | resv*) ;;
            *) return 1 ;;
        esac
    done
}

# Nodes left DOWN/DRAIN by an earlier run stay so until told otherwise.
resume_nodes() {
    local node state
    for node in "${NODES[@]}"; do
        state="$(sinfo -h -N -n "$node" -o '%t' 2>/dev/null | head -n1)"
        case "$state" in
            down* | drain* | drng* | fail*)
                scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
        esac
    done
}

show_logs() {
    local file
    for file in "$LOG_DIR"/*.log; do
        [[ -e "$file" ]] || continue
        log "--- last lines of $file"
        tail -n 15 "$file" >&2 || true
    done
}

cmd_start() {
    # A cluster in use counts as started: other test workers' jobs may keep its nodes busy, and a
    # loaded controller may be slow to answer, so its nodes get a while to show up.
    if [[ -n "$(live_pid slurmctld)" && -n "$(live_pid slurmd-node1)" && -n "$(live_pid slurmd-node2)" ]] &&
        wait_for "the running cluster's nodes to answer" 30 nodes_up; then
        log "already running (SLURM_CONF=$CONF)"
        return 0
    fi
    install_missing
    add_hosts_entry
    write_conf
    start_munge
    local fresh_controller=0
    [[ -z "$(live_pid slurmctld)" ]] && fresh_controller=1
    start_daemon slurmctld slurmctld -f "$CONF"
    local node
    for node in "${NODES[@]}"; do
        start_daemon "slurmd-$node" slurmd -f "$CONF" -N "$node"
    done
    # The saved state keeps job ids growing across restarts (run folders record job ids), but it
    # also brings back jobs of a cluster that was not stopped cleanly; their processes are gone.
    if ((fresh_controller)); then
        wait_for "slurmctld to answer" 30 squeue_answers || true
        cancel_all_jobs
    fi
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until nodes_up; do
        resume_nodes
        if ((SECONDS >= deadline)); then
            sinfo -N >&2 || true
            show_logs
            die "nodes not up after ${START_TIMEOUT_S}s"
        fi
        sleep 1
    done
    log "running: nodes ${NODES[*]} up (SLURM_CONF=$CONF)"
}

cancel_all_jobs() {
    [[ -n "$(live_pid slurmctld)" ]] || return 0
    local ids
    ids="$(squeue -h -o '%A' 2>/dev/null || true)"
    [[ -z "$ids" ]] && return 0
    log "cancelling job(s) $(tr '\n' ' ' <<<"$ids")"
    # shellcheck disable=SC2086 # one job id per word
    scancel $ids 2>/dev/null || true
    wait_for "cancelled jobs to leave the queue" 30 queue_empty || true
}

squeue_answers() {
    squeue -h >/dev/null 2>&1
}

queue_empty() {
    [[ -z "$(squeue -h -o '%A' 2>/dev/null)" ]]
}

stop_pid() {
    local pid="$1"
    kill -TERM "$pid" 2>/dev/null || return 0
    local tries=0
    while alive "$pid" && ((tries < 40)); do
        sleep 0.25
        tries=$((tries + 1))
    done
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

stop_daemon() {
    local name="$1" pid
    pid="$(live_pid "$name")"
    [[ -n "$pid" ]] && stop_pid "$pid"
    rm -f "$(pid_file "$name")"
}

# Pids of processes that carry this cluster's mark (slurmstepd and what it left behind).
marked_pids() {
    local environ pid
    for environ in /proc/[0-9]*/environ; do
        pid="${environ#/proc/}"
        pid="${pid%/environ}"
        [[ "$pid" == "$$" ]] && continue
        # Kernel threads and processes that just ended have no readable environ: skip them quietly.
        if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qxF "$MARK_VAR=$STATE_DIR"; then
            printf '%s\n' "$pid"
        fi
    done
}

# Pids of all descendants of the given pids, deepest last.
descendants() {
    local -a frontier=("$@") found=()
    local parent child
    while [[ ${#frontier[@]} -gt 0 ]]; do
        parent="${frontier[0]}"
        frontier=("${frontier[@]:1}")
        for child in $(ps -o pid= --ppid "$parent" 2>/dev/null); do
            found+=("$child")
            frontier+=("$child")
        done
    done
    [[ ${#found[@]} -gt 0 ]] && printf '%s\n' "${found[@]}"
    return 0
}

stop_leftovers() {
    local -a marked=() all=()
    mapfile -t marked < <(marked_pids)
    [[ ${#marked[@]} -eq 0 ]] && return 0
    mapfile -t all < <(descendants "${marked[@]}")
    all+=("${marked[@]}")
    log "stopping ${#all[@]} leftover process(es) of this cluster: ${all[*]}"
    local pid
    for pid in "${all[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}

cmd_stop() {
    cancel_all_jobs
    local node
    for node in "${NODES[@]}"; do
        stop_daemon "slurmd-$node"
    done
    stop_daemon slurmctld
    stop_daemon munged
    stop_leftovers
    unlink_system_conf
    if [[ "$(id -u)" -eq 0 ]]; then
        remove_hosts_entry
    fi
    log "stopped"
}

cmd_status() {
    local name pid running=0
    for name in munged slurmctld slurmd-node1 slurmd-node2; do
        pid="$(live_pid "$name")"
        if [[ -n "$pid" ]]; then
            printf '%-14s running (pid %s)\n' "$name" "$pid"
            running=$((running + 1))
        elif [[ "$name" == munged ]] && munge_answers; then
            printf '%-14s not started here; another munged answers\n' "$name"
        else
            printf '%-14s stopped\n' "$name"
        fi
    done
    printf 'SLURM_CONF=%s\n' "$CONF"
    if [[ -n "$(live_pid slurmctld)" ]]; then
        sinfo -N -o '%N %P %t %c %m' || true
        squeue || true
    fi
    ((running > 0)) || return 3
}

main() {
    case "${1:-}" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        *)
            printf 'usage: %s start|stop|status\n' "$0" >&2
            exit 2
            ;;
    esac
}

main "$@"
