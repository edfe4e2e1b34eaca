# Runs the harness's entrypoint ($evolve_entrypoint) as the sandbox user from /evolve/harness.
# Its output goes through a fifo into a capped file inside the container: a harness printing
# gigabytes is cut off there and nothing streams to the host; processes it leaves behind hold only
# the fifo, so the run ends when the entrypoint itself exits. Its exit status goes to .exit_code.
mkfifo "$evolve_out/.pipe" \
  && (head -c "$evolve_log_bytes" < "$evolve_out/.pipe" > "$evolve_out/harness.log" 2>/dev/null &) \
  && cd /evolve/harness && ( eval "$evolve_entrypoint" ) > "$evolve_out/.pipe" 2>&1 < /dev/null
echo $? > "$evolve_out/.exit_code"
