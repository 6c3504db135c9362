# Shared by the load scripts (bench_serve.sh, soak.sh): source it.

# wait_ready URL PID LOG: waits (up to 60 s) until URL answers 2xx; prints LOG and
# fails if the process PID dies first.
wait_ready() {
  local url=$1 pid=$2 log=$3
  for _ in $(seq 1 240); do
    curl -fs "$url" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log"; return 1; }
    sleep 0.25
  done
  echo "no answer from $url within 60 s" >&2
  cat "$log"
  return 1
}

# need_wrk: installs Debian's wrk when it is missing (as root).
need_wrk() {
  command -v wrk >/dev/null && return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing wrk (Debian package)"
    apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
  else
    echo "needs wrk (apt-get install wrk)" >&2
    return 1
  fi
}

# latest_version REPO MODEL: the highest version folder of a model.
latest_version() {
  ls "$1/$2" | grep -E '^[1-9][0-9]*$' | sort -n | tail -n1
}
