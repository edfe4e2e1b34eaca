# Prints $evolve_collected as a base64 tar between $evolve_inline lines when it holds at most
# $evolve_inline_bytes (saving a copy out); see evolve.testbed.read_collected.
set -- $(du -sb "$evolve_collected") && if [ "$1" -le "$evolve_inline_bytes" ]; then
  echo "$evolve_inline"; tar -C "$evolve_collected" -cf - . | base64 -w 0 && echo && echo "$evolve_inline"
fi
:
