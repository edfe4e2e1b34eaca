# Run as root, after every harness process is gone: writes the model_patch and copies the files
# listed in $evolve_files (lines "CAP NAME PATH") into $evolve_collected. See
# evolve.testbed.collect_script. File names never reach the shell's words: they go through
# NUL-separated files, with find -print0, git -z, xargs -0 and literal pathspecs.
p=$evolve_private
c=$evolve_collected
if [ -e "$c" ]; then rm -rf "$c"; fi; mkdir -m 700 "$c" || exit 4
cd "$evolve_testbed" || exit 4
# A collect killed half-way (before a restart) may have left git's lock behind.
rm -f "$evolve_shadow/index.lock" "$p/big.z" "$p/large.z" "$p/spec.z" "$p/noise.z" "$p/noisy"
# Git on the shadow, as root: no user config (HOME is /tmp, which the harness can write).
shadow_git() {
  GIT_CONFIG_GLOBAL=/dev/null git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c 'safe.directory=*' \
    --git-dir="$evolve_shadow" --work-tree="$evolve_testbed" "$@"
}
# git's messages may quote the harness's file names: they go to a file, never to the output,
# where only evolve's own markers may appear.
nodiff() { { printf '%s: ' "$1"; tail -c 500 "$p/diff.err"; } | tr -c '[:print:]' ' ' > "$c/diff_error"; : > "$c/model.patch"; }
# Untracked (not in the base, not ignored) regular files over the cap: left out, listed. The same
# walk (GNU find) notes any name the build-noise pathspecs below can match (noisy): without one, no
# added file can match them, and git is not asked (a superset: the noise listing itself is git's).
# Where that walk fails (another find), the plain one runs and git is asked.
find . -path ./.git -prune -o \( -type f -size +"$evolve_large_bytes"c -fprint0 "$p/big.z" \) , \
  \( \( -name __pycache__ -o -name '*.py[co]' -o -name .pytest_cache -o -name '*.egg-info' \) -fprint "$p/noisy" \) \
  2> /dev/null \
  || { find . -path ./.git -prune -o -type f -size +"$evolve_large_bytes"c -print0 > "$p/big.z" 2> /dev/null
       echo any > "$p/noisy"; }
ok=1
if [ -s "$p/big.z" ]; then
  xargs -0 -r env GIT_CONFIG_GLOBAL=/dev/null GIT_LITERAL_PATHSPECS=1 git -c core.hooksPath=/dev/null \
    -c core.fsmonitor=false -c 'safe.directory=*' --git-dir="$evolve_shadow" --work-tree="$evolve_testbed" \
    ls-files -z -o --exclude-standard -- < "$p/big.z" > "$p/large.z" 2> "$p/diff.err" \
    || { nodiff 'listing untracked files'; ok=0; }
fi
if [ $ok = 1 ] && [ -s "$p/large.z" ]; then
  sed -z 's/^/:(exclude,literal)/' < "$p/large.z" > "$p/spec.z" \
    && xargs -0 -r stat --printf '%s %n\0' -- < "$p/large.z" | head -c "$evolve_listed_bytes" > "$c/large_files" \
    && tr -cd '\000' < "$p/large.z" | wc -c > "$c/large_files.count" || exit 4
fi
if [ $ok = 1 ]; then
  if [ -s "$p/spec.z" ]; then shadow_git add -A --pathspec-from-file="$p/spec.z" --pathspec-file-nul
  else shadow_git add -A .; fi > /dev/null 2> "$p/diff.err" || { nodiff 'git add'; ok=0; }
fi
# What running code and installing the package leave in /testbed is never part of a model_patch,
# even where a .gitignore of the harness's re-includes it or the base already had such files
# (pathspec excludes, unlike ignore rules, cannot be overridden from the work tree). Such noise
# the harness made visible (a .gitignore re-including *.pyc, say) is listed, never diffed.
if [ $ok = 1 ] && [ -s "$p/noisy" ]; then
  shadow_git diff --cached --name-only -z --diff-filter=A "$evolve_base" -- ':(glob)**/__pycache__/**' \
    ':(glob)**/*.py[co]' ':(glob)**/.pytest_cache/**' ':(glob)**/*.egg-info/**' 2> /dev/null \
    | head -c "$evolve_listed_bytes" > "$p/noise.z"
  if [ -s "$p/noise.z" ]; then cp "$p/noise.z" "$c/noise" || exit 4; fi
fi
if [ $ok = 1 ]; then
  shadow_git diff --cached --binary --no-ext-diff --no-textconv --no-color "$evolve_base" -- . \
    ':(exclude,glob)**/__pycache__/**' ':(exclude,glob)**/*.py[co]' ':(exclude,glob)**/.pytest_cache/**' \
    ':(exclude,glob)**/*.egg-info/**' > "$c/model.patch" 2> "$p/diff.err" || nodiff 'git diff'
fi
if [ ! -e "$c/diff_error" ] && s=$(stat -c %s "$c/model.patch") && [ "$s" -gt "$evolve_max_patch" ]; then
  echo "$s" > "$c/patch_size"; : > "$c/model.patch"
fi
# CAP is one byte over the file's cap, so the reader can tell (see read_collected).
while read -r cap name path; do
  [ -n "$name" ] || continue
  if [ -f "$path" ] && [ ! -L "$path" ]; then head -c "$cap" "$path" > "$c/$name" || exit 6; fi
done <<END_OF_FILES
$evolve_files
END_OF_FILES
