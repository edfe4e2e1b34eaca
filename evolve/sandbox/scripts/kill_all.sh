# Functions (dash) run as root. kill_all kills every process but PID 1, the container's main
# process (left stopped) and the calling exec, or exits 3; see reap.sh.

# reap: SIGKILL every process but PID 1, $main, this shell, its parent and $spare, until none is
# left (or exit 3).
reap() {
  left=1
  round=0
  while [ "$left" != 0 ] && [ "$round" -lt 1000 ]; do
    left=0
    round=$((round + 1))
    for d in /proc/[0-9]*; do
      p=${d#/proc/}
      case "$p" in 1|"$main"|"$$"|"$PPID"|"$spare") continue;; esac
      line=
      read -r line 2>/dev/null < "$d/stat"
      [ -n "$line" ] || continue
      set -- ${line##*) }
      case "$1" in Z|X|x) continue;; esac
      kill -KILL "$p" 2>/dev/null
      left=$((left + 1))
    done
  done
  [ "$left" = 0 ] || { echo "evolve: $left processes survived SIGKILL" >&2; exit 3; }
}

kill_all() {
  kill -STOP -1 2>/dev/null
  main=0
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = 1 ] && continue
    line=
    read -r line 2>/dev/null < "$d/stat"
    [ -n "$line" ] || continue
    set -- ${line##*) }
    if [ "$2" = 1 ] && { [ "$main" = 0 ] || [ "$p" -lt "$main" ]; }; then main=$p; fi
  done
  spare=
  reap
  kill -CONT "$PPID" 2>/dev/null
}
