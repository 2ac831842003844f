#!/usr/bin/env bash
# Runs one etcd-lifeboat command in the cluster, as a Job cloned from the backup CronJob (same image,
# ConfigMap, store credentials, placement), waits for it and prints its log.
#
#   scripts/lifeboat-job.sh -n NAMESPACE backup            # a backup now (same as the nightly one)
#   scripts/lifeboat-job.sh -n NAMESPACE list              # backups in the store
#   scripts/lifeboat-job.sh -n NAMESPACE verify latest     # restore drill of the newest backup
#   scripts/lifeboat-job.sh -n NAMESPACE verify 20261122T021700Z-r123456
#   scripts/lifeboat-job.sh -n NAMESPACE prune
#
# Needs kubectl and python3 on the workstation. Exit code: the command's exit code inside the Job
# (see docs/runbooks/README.md, "Exit codes"), 1 for a problem with the Job itself, 2 for bad usage.
set -euo pipefail

ns=""
timeout=${TIMEOUT:-3600}
while getopts "n:" opt; do
  case $opt in
    n) ns=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ -n "$ns" ] && [ $# -ge 1 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
case $1 in
  backup|list|verify|prune) ;;
  *) echo "lifeboat-job: unsupported command '$1' (restore has its own Jobs; see the runbook)" >&2; exit 2 ;;
esac

job="etcd-lifeboat-$1-$(date -u +%Y%m%d%H%M%S)"
args_json=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$@")
kubectl -n "$ns" create job "$job" --from=cronjob/etcd-lifeboat-backup --dry-run=client -o json \
  | python3 -c '
import json, sys
job = json.load(sys.stdin)
args = json.loads(sys.argv[1])
spec = job["spec"]
spec["backoffLimit"] = 0
spec.pop("podFailurePolicy", None)
containers = spec["template"]["spec"]["containers"]
[c for c in containers if c["name"] == "backup"][0]["args"] = args
json.dump(job, sys.stdout)
' "$args_json" | kubectl -n "$ns" create -f - >/dev/null
echo "lifeboat-job: started job/$job in $ns: etcd-lifeboat $*" >&2

deadline=$((SECONDS + timeout))
while :; do
  state=$(kubectl -n "$ns" get job "$job" -o jsonpath='{.status.succeeded}/{.status.failed}')
  case $state in
    1/*) result=0; break ;;
    */1) result=1; break ;;
  esac
  if [ $SECONDS -ge $deadline ]; then echo "lifeboat-job: timed out after ${timeout}s" >&2; result=1; break; fi
  sleep 5
done
kubectl -n "$ns" logs "job/$job" --all-containers || true
code=$(kubectl -n "$ns" get pods -l "job-name=$job" \
  -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.exitCode}' 2>/dev/null || true)
echo "lifeboat-job: job/$job finished, exit code ${code:-unknown} (kubectl -n $ns delete job $job when done)" >&2
if [[ "$code" =~ ^[0-9]+$ ]]; then exit "$code"; fi
exit "$result"
