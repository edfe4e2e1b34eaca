# The grading steps, run as root after kill_all.sh (see evolve.grading). It is a root-only file, and
# its variables are not exported, so the tests can never learn the nonce. $as_user (the prefix that
# runs a program as the sandbox user, empty when the steps run as root) and $user_ids come from
# evolve.testbed.run_as_root. Prints "<nonce> <marker>" lines, each followed by its text, and
# "<nonce> frame NAME BASE64" lines; see grading._outcome.
mark() { printf '\n%s %s\n' "$evolve_nonce" "$*"; }
# A frame's payload is gzip, else zlib (no gzip or GNU base64 in the image), then base64; the host
# reads either. gzip and base64 spare a Python start per frame.
if command -v gzip > /dev/null 2>&1 && printf x | base64 -w 0 > /dev/null 2>&1; then
  frame_pack() { gzip -c -n | base64 -w 0; }
else
  frame_pack() { python3 -I -c 'import base64,sys,zlib; d=sys.stdin.buffer.read(); sys.stdout.write(base64.b64encode(zlib.compress(d)).decode())'; }
fi
frame() {
  printf '\n%s frame %s ' "$evolve_nonce" "$1"
  frame_pack
  printf '\n'
}
L=$evolve_step_log
cd "$evolve_testbed" || exit 1

# apply_patch TAG PATH: git apply, then --3way, then patch --fuzz, as the sandbox user; the tree
# is reset after each failed attempt. Marks "apply TAG I COMMAND" and "rc RC" per attempt; marks
# "TAG-patch-failed" and ends the script when none applies. $as_user is left unquoted on purpose
# (several words, no globs); the git options are written out, never expanded, so no file name in
# /testbed can match a glob in them.
apply_patch() {
  tag=$1
  path=$2
  for i in 0 1 2; do
    case $i in
      0) set -- git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c 'safe.directory=*' \
           apply --verbose --whitespace=nowarn "$path";;
      1) set -- git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c 'safe.directory=*' \
           apply --verbose --whitespace=nowarn --3way "$path";;
      2) set -- patch --batch --fuzz=5 -p1 -i "$path";;
    esac
    mark apply "$tag" "$i" "$*"
    timeout --kill-after=5 "$evolve_apply_timeout" $as_user "$@" > "$L" 2>&1
    rc=$?
    tail -c 8000 "$L"
    mark rc $rc
    [ $rc = 0 ] && return 0
    timeout --kill-after=5 "$evolve_apply_timeout" $as_user sh -c "$evolve_reset" > /dev/null 2>&1
  done
  mark "$tag-patch-failed"
  exit 0
}

if [ "$evolve_apply_model" = 1 ]; then apply_patch model "$evolve_patch_file"; fi
mark neutralise
# It also writes the kept paths (kept.z) and python3's site-packages directories (sites.txt).
timeout --kill-after=5 "$evolve_neutralise_timeout" python3 -I "$evolve_neutralise" "$evolve_neutral_spec" \
  "$evolve_private/kept.z" "$evolve_private/sites.txt" > "$evolve_private/neutral.out" 2> "$L"
rc=$?
if [ $rc != 0 ]; then tail -c 2000 "$L"; mark neutralise-failed $rc; exit 0; fi
frame neutral < "$evolve_private/neutral.out"
if [ "$evolve_apply_test" = 1 ]; then apply_patch test "$evolve_test_patch_file"; fi

# evolve's plugin goes into the site-packages of the Pythons the tests may use, under a name
# nobody can guess; its channel is fd 3, opened here on a root-only file.
# python3's came from the neutraliser; `python` is asked only when it is another program.
installed=0
{
  cat "$evolve_private/sites.txt"
  if command -v python > /dev/null 2>&1 \
      && [ "$(readlink -f "$(command -v python)")" != "$(readlink -f "$(command -v python3)")" ]; then
    python -I -c 'import site,sys; print("\n".join(getattr(site,"getsitepackages",lambda:[])() + [p for p in sys.path if p.endswith("-packages")]))' 2>/dev/null
  fi
} | sort -u > "$L"
while IFS= read -r d; do
  [ -d "$d" ] && [ ! -L "$d" ] && { install -m 644 "$evolve_plugin_src" "$d/$evolve_plugin.py" 2> /dev/null \
    || { cp "$evolve_plugin_src" "$d/$evolve_plugin.py" && chmod 644 "$d/$evolve_plugin.py"; }; } && installed=1
done < "$L"
CH=$(mktemp -d /tmp/.evolve-XXXXXXXXXX) || exit 1
{ printf '%s\n' "$evolve_nonce"; cat "$evolve_private/kept.z"; } > "$CH/t"
# mktemp -d made $CH 0700.
chown -R "$user_ids" "$CH" && chmod 600 "$CH/t"
: > "$evolve_channel"
# The test suite's files (the neutraliser's rule for test infrastructure: tests/, testing/,
# test_*.py, *_test.py, conftest.py; none under .git, site-packages or __pycache__) as they are
# before the tests run: change time, size, inode and name, then content. Compared after the run:
# a file that changed or went means something rewrote the tests or their data while they ran,
# which the test process's own records cannot show (it may happen before pytest reads them).
suite_state() {
  timeout --kill-after=5 "$evolve_apply_timeout" sh -c 'xargs -0 -r stat -c "%z %s %i %n" -- < "$1" 2>&1
    xargs -0 -r sha1sum -- < "$1" 2>&1' sh "$evolve_private/suite.z"
  echo "rc $?"
}
if find "$evolve_testbed" \( -name .git -o -name site-packages -o -name __pycache__ \) -prune -o -type f \
    -regextype posix-extended -regex '.*/(tests?|testing)/.*|.*/test_[^/]*\.py|.*_test\.py|.*/conftest\.py' \
    -print0 > "$evolve_private/suite.z" 2> "$L"; then
  suite_state > "$evolve_private/suite.before"
  suite_watched=1
else
  suite_watched=0
fi
mark tests
read t0 rest < /proc/uptime
timeout --kill-after=5 "$evolve_test_timeout" $as_user env \
  PYTEST_ADDOPTS="-p $evolve_plugin${PYTEST_ADDOPTS:+ $PYTEST_ADDOPTS}" EVOLVE_GRADE_CHANNEL="3 $CH/t" \
  sh -c "$evolve_test_cmd" 3> "$evolve_channel"
rc=$?
read t1 rest < /proc/uptime
# Whatever the tests left running (holding the output open, say) ends here.
kill_all
mark exit $rc $t0 $t1 $installed
# The suite's files compared with their state before the run (see suite_state); printed before
# the channel, so the channel's frame never comes back without this one.
if [ "$suite_watched" = 1 ]; then
  suite_state > "$evolve_private/suite.after"
  if [ "$(sha1sum < "$evolve_private/suite.before")" = "$(sha1sum < "$evolve_private/suite.after")" ]; then
    printf 'same\n' | { frame suite; }
  elif command -v diff > /dev/null 2>&1; then
    { printf 'changed\n'; diff "$evolve_private/suite.before" "$evolve_private/suite.after" | head -c 4000; } \
      | { frame suite; }
  else
    { printf 'changed\n'; head -c 4000 "$evolve_private/suite.after"; } | { frame suite; }
  fi
else
  printf 'unwatched\n' | { frame suite; }
fi
grep -F "\"n\": \"$evolve_nonce\"" "$evolve_channel" | head -c "$evolve_channel_bytes" | { frame channel; }
mark end
