# The agent phase's run, as root (see evolve.testbed.run_as_root for $as_user): runs
# $evolve_entrypoint_sh as the sandbox user under timeout and prints
# "$evolve_harness_exit RC MS" (MS: milliseconds it ran, -1 without a nanosecond clock).
# Without $as_user nothing here can become the sandbox user: it only hands the output directory to
# $evolve_owner (if set) and exits, and the caller runs the entrypoint in its own exec.
if [ -z "$as_user" ]; then
  if [ -n "$evolve_owner" ]; then chown "$evolve_owner" "$evolve_out" || exit 1; fi
  exit 0
fi
t0=$(date +%s%N)
# $as_user is left unquoted on purpose: it is several words (setpriv and its options), no globs.
timeout --kill-after=5 "$evolve_timeout" $as_user sh "$evolve_entrypoint_sh" < /dev/null > /dev/null 2>&1
rc=$?
t1=$(date +%s%N)
case "$t0:$t1" in *[!0-9:]*|:*|*:) ms=-1;; *) ms=$(( (t1 - t0) / 1000000 ));; esac
echo "$evolve_harness_exit" $rc $ms
