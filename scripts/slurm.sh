#!/usr/bin/env bash
# A throwaway one-node Slurm cluster on this machine, for the test suite and for trying
# the Slurm path on a laptop. Needs root, Debian's slurm-wlm and munge (apt-get install
# slurm-wlm munge); works without systemd. Every file it writes lives in STATE_DIR
# (default <repo>/.cache/slurm); it listens on ports 16817/16818 so a system Slurm on the
# usual 6817/6818 is left alone.
#
#   out="$(scripts/slurm.sh start [STATE_DIR])" && eval "$out"   # prints: export SLURM_CONF=...
#   sbatch --array=0-3 --wrap 'echo $SLURM_ARRAY_TASK_ID'; squeue
#   scripts/slurm.sh status [STATE_DIR]   # exit 0 and sinfo if up, 1 if not
#   scripts/slurm.sh stop [STATE_DIR]     # cancels all jobs, stops what start started
#
# start prints only the export line on stdout (all chatter goes to stderr) and is
# idempotent. When Slurm cannot run here it prints one line naming the reason (and the
# log to read) and exits 2, so a test can skip with that reason. Every wait has a timeout.
set -euo pipefail

# Daemons and mungekey live in sbin, which a non-login root shell may lack.
export PATH="$PATH:/usr/sbin:/sbin"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CMD="${1:-}"
STATE="${2:-$REPO/.cache/slurm}"
# Absolute and without symlinks: Slurm resolves relative paths against each daemon's cwd,
# and stray steps are recognised by the paths of their open files, which the kernel
# reports resolved.
set_state_dir() {
    case "$STATE" in /*) ;; *) STATE="$PWD/$STATE" ;; esac
    if [[ -d "$STATE" ]]; then STATE="$(cd "$STATE" && pwd -P)"; fi
    CONF="$STATE/slurm.conf"
    export SLURM_CONF="$CONF"
}
set_state_dir

NODE="$(hostname -s)"
CTLD_PORT=16817
SLURMD_PORT=16818
KILL_WAIT=5
# munged's own paths are fixed by the Debian package (its key, socket and the checks it
# makes on their owners), so a munged is shared machine-wide; we only stop one we started.
MUNGE_RUN=/run/munge

say() { echo "slurm.sh: $*" >&2; }
# One line, exit 2: the contract for "Slurm cannot run here, skip".
cannot() { echo "slurm.sh: cannot start Slurm: $*" >&2; exit 2; }

# PID from a pid file if that process is alive and still the daemon named (guards
# against a stale file whose PID the kernel has since reused).
live_pid() { # NAME PIDFILE
    local pid
    [[ -r "$2" ]] || return 1
    pid="$(tr -dc 0-9 <"$2")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]] || return 1
    # A dead daemon no one has reaped yet (PID 1 in a container may not) still answers kill -0.
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]] || return 1
    echo "$pid"
}

# Polls CMD every 0.2 s for at most SECS seconds.
wait_for() { # SECS CMD...
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

gone() {
    ! kill -0 "$1" 2>/dev/null || [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" == Z ]]
}

munge_answers() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

ctld_up() { timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; }

node_state() { timeout 5 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }

# Up and taking jobs; busy counts, since an up cluster may be running some.
node_serving() {
    case "$(node_state)" in idle | mixed | allocated | completing) return 0 ;; esac
    return 1
}

cluster_up() {
    # munge first: without it the client commands below spend seconds retrying.
    munge_answers &&
        live_pid slurmctld "$STATE/slurmctld.pid" >/dev/null &&
        live_pid slurmd "$STATE/slurmd.pid" >/dev/null &&
        ctld_up && node_serving
}

# TERM, up to SECS for it to go, then KILL.
stop_pid() { # NAME PID SECS
    local name="$1" pid="$2" secs="$3"
    kill -TERM "$pid" 2>/dev/null || return 0
    if ! wait_for "$secs" gone "$pid"; then
        say "$name ($pid) ignored SIGTERM for ${secs}s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
        wait_for 5 gone "$pid" || say "$name ($pid) survived SIGKILL"
    fi
}

stop_daemon() { # NAME
    local pid
    if pid="$(live_pid "$1" "$STATE/$1.pid")"; then
        say "stopping $1 ($pid)"
        stop_pid "$1" "$pid" 15
    fi
    rm -f "$STATE/$1.pid"
}

# slurmstepd processes of this cluster: they log to our slurmd.log, which tells them
# apart from steps of any other Slurm on the machine.
our_stepds() {
    local p fd
    for p in /proc/[0-9]*; do
        [[ "$(cat "$p/comm" 2>/dev/null)" == slurmstepd ]] || continue
        for fd in "$p"/fd/*; do
            if [[ "$(readlink "$fd" 2>/dev/null)" == "$STATE/"* ]]; then
                echo "${p#/proc/}"
                break
            fi
        done
    done
}

no_stepds() { [[ -z "$(our_stepds)" ]]; }

descendants() { # PID: all processes below it, deepest last
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}

# A slurmstepd outlives slurmd by design, so steps the controller could not cancel (it was
# already dead, or the job ignored SIGKILL's deadline) are killed here, their job
# processes first: killing the stepd alone would orphan them.
kill_stray_steps() {
    local stepd pids
    for stepd in $(our_stepds); do
        pids="$(descendants "$stepd" | tr '\n' ' ')"
        say "killing stray slurmstepd $stepd ($(tr '\0' ' ' <"/proc/$stepd/cmdline" 2>/dev/null)) and its processes: ${pids:-none}"
        # shellcheck disable=SC2086 # word splitting of the PID list is the point
        [[ -z "$pids" ]] || kill -KILL $pids 2>/dev/null || true
        kill -KILL "$stepd" 2>/dev/null || true
    done
    wait_for 5 no_stepds ||
        say "slurmstepd still running: $(our_stepds | tr '\n' ' ')"
}

no_jobs() {
    local out
    out="$(timeout 5 squeue -h -o %i 2>/dev/null)" || return 1
    [[ -z "$out" ]]
}

cancel_all_jobs() {
    local jobs
    jobs="$(timeout 5 squeue -h -o %F 2>/dev/null | sort -u | tr '\n' ' ')" || return 0
    [[ -n "${jobs// /}" ]] || return 0
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086 # one argument per job id
    timeout 10 scancel $jobs 2>/dev/null || true
    # Cancelled jobs stay listed while COMPLETING; KillWait bounds the SIGTERM→SIGKILL gap.
    wait_for $((KILL_WAIT + 15)) no_jobs ||
        say "jobs still listed after cancelling: $(timeout 5 squeue -h -o '%i %T' 2>/dev/null | tr '\n' ' ')"
}

do_stop() {
    [[ -d "$STATE" ]] || return 0
    lock_state_dir
    if live_pid slurmctld "$STATE/slurmctld.pid" >/dev/null && live_pid slurmd "$STATE/slurmd.pid" >/dev/null; then
        cancel_all_jobs
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
    kill_stray_steps
    stop_daemon munged
}

write_conf() {
    mkdir -p "$STATE/ctld" "$STATE/spool"
    : >"$STATE/plugstack.conf"
    cat >"$CONF.tmp" <<EOF
# Written by scripts/slurm.sh start; rewritten on every start, edit the script instead.
ClusterName=vcl
# The address is given so a hostname that does not resolve cannot stop the cluster.
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Empty, so SPANK plugins installed system-wide stay out of it.
PlugStackConfig=$STATE/plugstack.conf
MailProg=/bin/true
# No cgroup plugins: they need a cgroup setup (and cgroup.conf) machines differ on.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
# CPUs only: with memory consumable too (the default) and no memory asked for, each job
# would take the whole node and array tasks would run one at a time.
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Schedule at submit time and re-test pending work every second: a pending array task is
# started by the backfill pass, ~1 s after a CPU frees, not by the job-end event, so the
# 30 s bf_interval and 60 s sched_interval defaults would make arrays crawl.
SchedulerParameters=batch_sched_delay=0,sched_interval=1,sched_min_interval=0,bf_interval=1
KillWait=$KILL_WAIT
MinJobAge=300
ReturnToService=2
InactiveLimit=0
# RealMemory: jobs ask for memory (sbatch --mem) and are refused above it; 90% of what
# the kernel reports, since slurmd drains a node that has less than it claims.
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo) State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munged() {
    if munge_answers; then
        return 0
    fi
    say "starting munged"
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    install -d -o munge -g munge -m 0700 /var/log/munge /etc/munge
    install -d -o munge -g munge -m 0711 /var/lib/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key >&2
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    # munged refuses a socket left by one that died; --force takes it over.
    # 9>&-: daemons must not inherit the state dir's lock, or they would hold it for life.
    if ! runuser -u munge -- munged --force >"$STATE/munged.start.log" 2>&1 9>&-; then
        cannot "munged failed to start: $(tail -n1 "$STATE/munged.start.log") (read $STATE/munged.start.log and /var/log/munge/munged.log)"
    fi
    wait_for 10 munge_answers ||
        cannot "munged started but does not answer munge -n | unmunge within 10s (read /var/log/munge/munged.log)"
    # Record it as ours only now, so stop leaves a munged someone else started alone.
    cp "$MUNGE_RUN/munged.pid" "$STATE/munged.pid"
}

# The line of LOG past byte OFFSET that best says why a daemon failed.
log_reason() { # LOG OFFSET
    local tail_
    tail_="$(tail -c +$(($2 + 1)) "$1" 2>/dev/null)"
    { grep -m1 -E 'fatal|Unable to bind' <<<"$tail_" || grep 'error' <<<"$tail_" | tail -n1 || tail -n1 <<<"$tail_"; } |
        sed -E 's/^\[[^]]*\] //'
}

# Starts a Slurm daemon in its daemon mode and waits for its pid file and READY.
start_slurm_daemon() { # NAME READY_CMD
    local name="$1" ready="$2" log="$STATE/$1.log" pidf="$STATE/$1.pid" offset
    say "starting $name"
    rm -f "$pidf"
    offset="$(stat -c %s "$log" 2>/dev/null || echo 0)"
    local args=(-f "$CONF")
    # -i: a state dir from a crashed run must not keep the controller from starting.
    [[ "$name" == slurmctld ]] && args+=(-i)
    [[ "$name" == slurmd ]] && args+=(-N "$NODE")
    # Config errors come out on stderr before it forks, so they go to its log too.
    if ! "$name" "${args[@]}" >>"$log" 2>&1 </dev/null 9>&-; then
        cannot "$name exited at start: $(log_reason "$log" "$offset") (read $log)"
    fi
    local deadline=$((SECONDS + 20))
    until live_pid "$name" "$pidf" >/dev/null && "$ready"; do
        # A daemon that forked and then died leaves its pid file or a fatal line behind;
        # noticing it beats waiting out the deadline. slurmd retries a busy port for long
        # before giving up, so that error counts as death too.
        if grep -qE 'fatal|Unable to bind listen port' <(tail -c +$((offset + 1)) "$log" 2>/dev/null) ||
            { [[ -s "$pidf" ]] && ! live_pid "$name" "$pidf" >/dev/null; }; then
            cannot "$name died at start: $(log_reason "$log" "$offset") (read $log)"
        fi
        ((SECONDS < deadline)) ||
            cannot "$name not ready after 20s: $(log_reason "$log" "$offset") (read $log)"
        sleep 0.2
    done
}

slurmd_registered() {
    live_pid slurmd "$STATE/slurmd.pid" >/dev/null || return 1
    case "$(node_state)" in
        "" | unknown* | *'*') return 1 ;; # not yet heard from it
        *drain* | *down*)
            # Left drained or down by an earlier run's crash; ReturnToService=2 covers
            # most DOWN cases but not DRAIN.
            timeout 5 scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
            return 1 ;;
    esac
    [[ "$(node_state)" == idle ]]
}

# start and stop hold this for their whole run: parallel tests each calling start would
# otherwise race, and the loser's cleanup would stop the winner's cluster.
LOCKED=0
lock_state_dir() {
    ((LOCKED == 0)) || return 0
    exec 9>"$STATE/.lock"
    if ! flock -w 90 9; then
        echo "slurm.sh: another slurm.sh kept $STATE/.lock for 90s" >&2
        exit 2
    fi
    LOCKED=1
}

undo_failed_start() {
    local rc=$?
    if ((rc != 0 && rc != 2)); then
        # Anything else that failed is still "cannot run here" to a caller deciding to skip.
        echo "slurm.sh: cannot start Slurm: '${FAILED_CMD:-?}' failed with exit $rc" >&2
        rc=2
    fi
    # Without the lock this run started nothing, and the cluster may be another run's.
    if ((rc != 0 && LOCKED == 1)); then do_stop 2>/dev/null || true; fi
    exit "$rc"
}

do_start() {
    [[ "$(id -u)" == 0 ]] || cannot "not root (uid $(id -u)): slurmd must run as root to launch jobs"
    local c
    for c in slurmctld slurmd slurmstepd munged munge unmunge sbatch squeue scancel sinfo scontrol runuser flock; do
        command -v "$c" >/dev/null ||
            cannot "$c not found (apt-get install slurm-wlm munge)"
    done
    getent passwd munge >/dev/null || cannot "no munge user (apt-get install munge)"

    # Whatever fails from here on must not leave half a cluster running.
    set -E
    trap 'FAILED_CMD="$BASH_COMMAND"' ERR
    trap undo_failed_start EXIT
    mkdir -p "$STATE"
    set_state_dir
    lock_state_dir
    if [[ -f "$CONF" ]] && cluster_up; then
        trap - EXIT
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    # Half up (one daemon died) is restarted from scratch rather than patched.
    stop_daemon slurmd
    stop_daemon slurmctld
    kill_stray_steps
    write_conf
    start_munged
    start_slurm_daemon slurmctld ctld_up
    # Jobs recovered from a run that died instead of stopping would rerun now, though their
    # processes were killed with it; a cluster's jobs end with it (stop cancels them), so
    # cancel them before slurmd could start them.
    local leftover
    leftover="$(timeout 5 squeue -h -o %F 2>/dev/null | sort -u | tr '\n' ' ')"
    if [[ -n "${leftover// /}" ]]; then
        say "cancelling jobs left from a run that was not stopped: $leftover"
        # shellcheck disable=SC2086 # one argument per job id
        timeout 10 scancel $leftover 2>/dev/null || true
    fi
    start_slurm_daemon slurmd slurmd_registered
    trap - EXIT
    say "up: $(timeout 5 sinfo -h -o '%P %D %T %N' 2>/dev/null)"
    echo "export SLURM_CONF=$CONF"
}

do_status() {
    if [[ -f "$CONF" ]] && cluster_up; then
        timeout 5 sinfo
        return 0
    fi
    echo "slurm.sh: not running (state dir $STATE)" >&2
    return 1
}

case "$CMD" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *)
        echo "usage: $0 start|stop|status [STATE_DIR]   (default STATE_DIR: $REPO/.cache/slurm)" >&2
        exit 64 ;;
esac
