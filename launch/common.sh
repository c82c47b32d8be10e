# Helpers that launch/gpu.sh and launch/tpu_pod.sh source (not a command of its own).
# shellcheck shell=bash

# Prints the calling script's header comment (its usage) to stderr and exits with status $1 (default 2).
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

# Quotes one word for a POSIX shell, leaving plain words (the usual flags and paths) as they are.
shq() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Exits unless run_dir $2 can sit inside the gin string binding '"...' that the launchers pass; $1 names the script.
check_run_dir_quotable() {
  case "$2" in
    *[\"\\]*) echo "$1: run_dir must not contain a double quote or a backslash." >&2; exit 2 ;;
  esac
}
