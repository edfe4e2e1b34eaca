# Run as the sandbox user: makes /testbed a single-commit git repository of its tree (no history).
cd "$evolve_testbed" && rm -rf .git && git init -q --template= && mkdir -p .git/info \
  && printf '%s' "$evolve_exclude" >> .git/info/exclude \
  && git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c 'safe.directory=*' add -A . \
  && git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c 'safe.directory=*' -c user.name=evolve \
     -c user.email=evolve@localhost commit -q --no-verify --allow-empty -m "$evolve_message"
