# Run as root when the snapshot is made inside the sandbox (the image holds the repo, the sandbox
# has no numeric user, or the task has a setup_patch): applies the setup_patch, makes the root-only
# shadow of /testbed's tree, prints its commit, then makes /testbed a single-commit repository
# ($evolve_visible, as the sandbox user through setpriv when $evolve_uid is set) or prints
# $evolve_later when the image has no setpriv.
cd "$evolve_testbed" || exit 1
if [ -n "$evolve_setup_patch" ]; then  # the task's setup_patch (a SWE-smith bug), before anything is recorded
  GIT_CONFIG_GLOBAL=/dev/null git -c core.hooksPath=/dev/null -c 'safe.directory=*' apply --whitespace=nowarn \
    "$evolve_setup_patch" >&2 || { echo "$evolve_setup_failed"; exit 1; }
  rm -f "$evolve_setup_patch"
fi
if [ -n "$evolve_chown" ]; then chown -R "$evolve_chown" "$evolve_testbed" || exit 1; fi
shadow_git() {
  GIT_CONFIG_GLOBAL=/dev/null git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c 'safe.directory=*' \
    --git-dir="$evolve_shadow" --work-tree="$evolve_testbed" "$@"
}
# No template files (sample hooks never run) and no reflog: fewer files, as in the host-built snapshot.
mkdir -p "$evolve_shadow" && chmod 700 "$evolve_private" && git init -q --bare --template= "$evolve_shadow" \
  && mkdir -p "$evolve_shadow/info" && printf '%s' "$evolve_exclude" > "$evolve_shadow/info/exclude" \
  && shadow_git add -A -f . \
  && shadow_git -c user.name=evolve -c user.email=evolve@localhost -c core.logAllRefUpdates=false \
     commit -q --no-verify --allow-empty -m base \
  && shadow_git rev-parse HEAD || exit 1
if [ -n "$evolve_uid" ]; then
  if command -v setpriv > /dev/null 2>&1; then
    setpriv --reuid="$evolve_uid" --regid="$evolve_gid" --groups="$evolve_gid" sh -c "$evolve_visible" >&2
  else
    echo "$evolve_later"
  fi
fi
