# Run as root (dash) after the harness, after kill_all.sh: leaves nothing the harness started
# running, or exits nonzero (then restart the sandbox instead). Needs $as_user (the prefix that runs
# a program as the sandbox user), $evolve_private and $evolve_freeze_py (freeze_pid1.py's source).
# Prints nothing but its own error messages. See evolve.testbed.reap_script for how it works.
kill_all
scope=0
read -r scope 2>/dev/null < /proc/sys/kernel/yama/ptrace_scope
if [ "$scope" = 0 ]; then
  kill -CONT 1 2>/dev/null
  zombies=1
  round=0
  while [ "$zombies" != 0 ] && [ "$round" -lt 2000 ]; do
    zombies=0
    round=$((round + 1))
    for d in /proc/[0-9]*; do
      line=
      read -r line 2>/dev/null < "$d/stat"
      set -- ${line##*) }
      [ "$1" = Z ] && zombies=$((zombies + 1))
    done
  done
  f="$evolve_private/freeze.out"
  [ -d "$evolve_private" ] || mkdir -p -m 700 "$evolve_private"
  rm -f "$f"
  # $as_user is left unquoted on purpose: it is several words (setpriv and its options), no globs.
  (cd / && exec $as_user python3 -I -S -c "$evolve_freeze_py") > "$f" 2>&1 < /dev/null &
  spare=$!
  ans=
  i=0
  while [ "$i" -lt 500 ]; do  # a counter, not $(seq 500): no subshell, no seq
    read -r ans 2>/dev/null < "$f"
    [ -n "$ans" ] && break
    sleep 0.01
    i=$((i + 1))
  done
  [ "$ans" = frozen ] || { echo "evolve: could not freeze PID 1: $ans" >&2; exit 3; }
  kill -STOP "$main" 2>/dev/null
  reap
fi
