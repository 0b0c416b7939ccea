#!/usr/bin/env bash
# CI: the workflow on a real single-node SLURM cluster. Installs Debian's SLURM (slurm-wlm),
# munge, slurmdbd and MariaDB; starts munged, MariaDB, slurmdbd (job accounting), slurmctld
# and slurmd (one node with this machine's CPUs and memory, one CPU partition, no GPU); runs
# the cluster command of docs/workflow.md on the test config from a copy of the checkout:
#   snakemake --profile workflow/profiles/slurm --configfile workflow/config/test.yaml
# cancels one running pretraining job on the way (the profile's `retries` must resubmit it),
# checks with sacct that every job COMPLETED (the cancelled one: CANCELLED, then COMPLETED on
# its retry), prints a summary and stops every daemon it started, also when it fails.
# Run as root on Debian 12 after scripts/setup.sh (it uses .venv); nothing is written in the
# checkout and nothing outside the state folder is configured (SLURM_CONF points there).
#   BSYM_SLURM_STATE  state folder (default: a new folder under /tmp, removed at the end)
#   BSYM_SLURM_KEEP   1: keep the state folder (configs, daemon logs, the run's copy)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
started=$SECONDS
say() { printf '[slurm-ci %4ss] %s\n' "$((SECONDS - started))" "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (installs Debian packages and starts daemons)"
[ -x "$ROOT/.venv/bin/snakemake" ] || die "$ROOT/.venv/bin/snakemake missing; run scripts/setup.sh"
"$ROOT/.venv/bin/python" -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
  || die "snakemake-executor-plugin-slurm missing in .venv; run scripts/setup.sh"

# -- packages ---------------------------------------------------------------------------------
packages=(slurm-wlm slurmdbd munge mariadb-server mariadb-client)
installed="$(dpkg-query -W -f='${Status}\n' "${packages[@]}" 2>/dev/null | grep -c "install ok installed" || true)"
if [ "$installed" = "${#packages[@]}" ]; then
  say "packages already installed: ${packages[*]}"
else
  say "installing ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${packages[@]}" \
    >/dev/null
fi
version() { dpkg-query -W -f='${Version}' "$1"; }
say "slurm-wlm $(version slurm-wlm), munge $(version munge), mariadb-server $(version mariadb-server)"

# -- state folder, daemons stopped on exit ------------------------------------------------------
state="${BSYM_SLURM_STATE:-$(mktemp -d /tmp/bsym-slurm.XXXXXX)}"
mkdir -p "$state"/{etc,log,run,munge,db,spool/ctld,spool/d,checkout}
chmod 755 "$state" "$state/munge"  # munged wants its socket reachable by every user
export SLURM_CONF="$state/etc/slurm.conf"
pids=()  # daemons this script started, stopped in reverse order
snakemake_pid=""
etc_conf=/etc/slurm/slurm.conf
cleanup() {
  local rc=$?
  set +e
  if [ -n "${snakemake_pid:-}" ] && kill -0 "$snakemake_pid" 2>/dev/null; then
    kill "$snakemake_pid"; wait "$snakemake_pid"  # it cancels the jobs it submitted
  fi
  if [ ${#pids[@]} -gt 0 ] && kill -0 "${pids[-1]}" 2>/dev/null && command -v scancel >/dev/null; then
    scancel --user "$(id -un)" 2>/dev/null  # this cluster's jobs only (SLURM_CONF)
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null
    for _ in $(seq 50); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.2; done
    kill -9 "${pids[i]}" 2>/dev/null
    wait "${pids[i]}" 2>/dev/null
  done
  [ "$(readlink "$etc_conf" 2>/dev/null)" = "$SLURM_CONF" ] && rm -f "$etc_conf"
  if [ "$rc" != 0 ]; then
    for f in "$state"/log/*.log "$state"/snakemake.log; do
      [ -s "$f" ] && { echo "---- last lines of $f"; tail -n 25 "$f"; }
    done
  fi
  if [ "${BSYM_SLURM_KEEP:-0}" = 1 ] || [ -n "${BSYM_SLURM_STATE:-}" ]; then
    say "state kept in $state"
  else
    rm -rf "$state"
  fi
  say "daemons stopped; exit $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Commands find the cluster through SLURM_CONF, except srun inside a job: the plugin's job
# step drops SLURM_* variables, so it reads /etc/slurm/slurm.conf, a link to ours meanwhile.
if [ -e "$etc_conf" ] || [ -L "$etc_conf" ]; then
  case "$(readlink "$etc_conf" || true)" in
    /tmp/bsym-slurm.*/etc/slurm.conf) rm -f "$etc_conf" ;;  # left by an interrupted run
    *) die "$etc_conf exists: this machine has a SLURM configuration; run this on a bare machine" ;;
  esac
fi
mkdir -p /etc/slurm
ln -s "$SLURM_CONF" "$etc_conf"

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until timeout 10 "$@" >"$state/wait.out" 2>&1; do
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || die "a daemon exited while waiting for $what"; done
    [ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for $what: $(tail -n 3 "$state/wait.out")"
    sleep 0.25
  done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
db_port=${BSYM_SLURM_DB_PORT:-13306} ctld_port=${BSYM_SLURMCTLD_PORT:-16817}
d_port=${BSYM_SLURMD_PORT:-16818} dbd_port=${BSYM_SLURMDBD_PORT:-16819}
for port in "$db_port" "$ctld_port" "$d_port" "$dbd_port"; do
  port_free "$port" || die "port $port is in use (another cluster or database?); set BSYM_SLURM*_PORT"
done

# -- munge: authentication between the SLURM daemons and commands ------------------------------
munge_socket="$state/munge/munge.sock"
dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$state/munge/munge.key"
munged --foreground --force --key-file="$state/munge/munge.key" --socket="$munge_socket" \
  --pid-file="$state/run/munged.pid" --seed-file="$state/munge/seed" \
  --log-file="$state/log/munged.log" >"$state/log/munged.out" 2>&1 &
pids+=($!)
wait_for 20 munged bash -c "munge -n -S '$munge_socket' | unmunge -S '$munge_socket'"
say "munged up"

# -- MariaDB: the accounting database ----------------------------------------------------------
mariadb-install-db --no-defaults --datadir="$state/db" --user=root --skip-test-db \
  --auth-root-authentication-method=socket >"$state/log/mariadb-install.log" 2>&1
db_socket="$state/run/mariadb.sock"
mariadbd --no-defaults --datadir="$state/db" --socket="$db_socket" --port="$db_port" \
  --bind-address=127.0.0.1 --skip-name-resolve --user=root --pid-file="$state/run/mariadb.pid" \
  --log-error="$state/log/mariadb.log" --innodb-buffer-pool-size=256M \
  --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 >"$state/log/mariadbd.out" 2>&1 &
pids+=($!)
wait_for 60 MariaDB mariadb-admin --socket="$db_socket" ping
db_password="$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mariadb --socket="$db_socket" -uroot -e "
  CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$db_password';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
say "MariaDB up on 127.0.0.1:$db_port"

# -- SLURM configuration ----------------------------------------------------------------------
node="bsym-ci"
# this machine as slurmd sees it: CPUs, sockets, cores, threads, memory (MB)
hardware="$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]*//')"
cat >"$SLURM_CONF" <<EOF
ClusterName=bsymci
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
AuthType=auth/munge
AuthInfo=socket=$munge_socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$state/spool/ctld
SlurmdSpoolDir=$state/spool/d
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
AccountingStoragePass=$munge_socket
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
MinJobAge=300
KillWait=5
ReturnToService=2
NodeName=$node NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=cpu Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$state/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$munge_socket
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=root
LogFile=$state/log/slurmdbd.log
PidFile=$state/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$db_password
StorageLoc=slurm_acct_db
EOF
chmod 600 "$state/etc/slurmdbd.conf"

# -- slurmdbd, slurmctld, slurmd --------------------------------------------------------------
slurmdbd -D >"$state/log/slurmdbd.out" 2>&1 &
pids+=($!)
wait_for 60 slurmdbd sacctmgr -n list cluster
sacctmgr -i add cluster bsymci >/dev/null
slurmctld -D -i >"$state/log/slurmctld.out" 2>&1 &
pids+=($!)
wait_for 60 slurmctld scontrol ping
slurmd -D -N "$node" >"$state/log/slurmd.out" 2>&1 &
pids+=($!)
wait_for 60 "node $node idle" bash -c "sinfo -h -n $node -o %T | grep -qx idle"
sacctmgr -i add account bsym Description=bsym-ci Organization=bsym >/dev/null
sacctmgr -i add user "$(id -un)" Account=bsym DefaultAccount=bsym >/dev/null
say "cluster up: $(sinfo -h -o '%P %D node(s), %c CPUs, %m MB, %T')"
say "accounting: $(sacctmgr -n -P list assoc user="$(id -un)" format=cluster,account,user | tr '\n' ' ')"

# -- the workflow, from a copy of the checkout ------------------------------------------------
work="$state/checkout"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # the checkout's files (new ones too), not its ignored outputs (.venv, results, data)
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf -) | tar -C "$work" -xf -
else
  tar -C "$ROOT" --exclude=./.venv --exclude=./.git --exclude=./results --exclude=./data \
    --exclude=./.snakemake -cf - . | tar -C "$work" -xf -
fi
log="$state/snakemake.log"
run_start="$(date +%FT%T)"
run_started=$SECONDS
say "snakemake --profile workflow/profiles/slurm --configfile workflow/config/test.yaml (in $work)"
(cd "$work" && exec timeout 900 "$ROOT/.venv/bin/snakemake" --profile workflow/profiles/slurm \
  --configfile workflow/config/test.yaml) >"$log" 2>&1 &
snakemake_pid=$!

# cancel one pretraining job a second after it starts running: SLURM reports it CANCELLED
# and the profile's `retries: 1` must submit it again
killed=""
while kill -0 "$snakemake_pid" 2>/dev/null && [ -z "$killed" ]; do
  while read -r id comment; do
    [ -n "$id" ] || continue
    sleep 1
    if scancel --state=RUNNING "$id" 2>/dev/null; then
      killed="$id"
      say "cancelled running SLURM job $id ($comment)"
      break
    fi
  done < <(squeue -h -t RUNNING -o '%i %k' | awk '$2 ~ /^rule_pretrain_wildcards_/')
  sleep 0.5
done
set +e
wait "$snakemake_pid"
snakemake_rc=$?
set -e
run_seconds=$((SECONDS - run_started))
[ "$snakemake_rc" = 0 ] || die "snakemake exited with $snakemake_rc after ${run_seconds}s (log: $log)"
[ -n "$killed" ] || die "no pretraining job was seen running, none cancelled"
grep -q "steps (100%) done" "$log" || die "snakemake did not finish every step"

# -- accounting: every job COMPLETED, the cancelled one retried ---------------------------------
run_id="$(sed -n 's/.*SLURM run ID: \([^ ]*\).*/\1/p' "$log" | head -1)"
[ -n "$run_id" ] || die "no 'SLURM run ID' in the snakemake log"
submitted="$(grep -c 'has been submitted with SLURM jobid' "$log" || true)"
sacct_jobs() {
  sacct -X -n -P -S "$run_start" --name "$run_id" -o JobID,State,Elapsed,Account,Comment%120
}
# the last records reach slurmdbd a moment after the jobs end
for _ in $(seq 60); do
  table="$(sacct_jobs)"
  [ "$(grep -c . <<<"$table")" = "$submitted" ] \
    && ! grep -qE '\|(PENDING|RUNNING|COMPLETING)\|' <<<"$table" && break
  sleep 0.5
done
echo "JobID|State|Elapsed|Account|Comment (rule and wildcards)"
echo "$table"
n_jobs="$(grep -c . <<<"$table")"
[ "$n_jobs" = "$submitted" ] || die "sacct lists $n_jobs jobs of run $run_id, snakemake submitted $submitted"
killed_line="$(grep "^$killed|" <<<"$table")" || die "sacct does not list the cancelled job $killed"
grep -q '|CANCELLED' <<<"$killed_line" || die "job $killed is not CANCELLED in sacct: $killed_line"
killed_comment="$(cut -d'|' -f5 <<<"$killed_line")"
others="$(grep -v "^$killed|" <<<"$table")"
bad="$(awk -F'|' '$2 != "COMPLETED"' <<<"$others")"
[ -z "$bad" ] || die "jobs not COMPLETED in sacct: $bad"
retried="$(awk -F'|' -v c="$killed_comment" '$5 == c' <<<"$others")"
[ -n "$retried" ] || die "the cancelled job ($killed_comment) was not submitted again"
say "summary: $n_jobs SLURM jobs in run $run_id ($(cut -d'|' -f2 <<<"$table" \
  | sed 's/ by .*//' | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep=", "}'))"
say "retried: job $killed ($killed_comment) CANCELLED, resubmitted as job $(cut -d'|' -f1 <<<"$retried") COMPLETED"
say "workflow wall time ${run_seconds}s, total ${SECONDS}s"
