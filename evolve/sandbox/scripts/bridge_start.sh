# Starts the loopback bridge (/evolve/bridge.py) as the sandbox user, before the harness: it
# listens on 127.0.0.1:$evolve_bridge_port (OPENAI_BASE_URL) and carries the traffic to the
# gateway's socket $evolve_bridge_socket. It returns once the port listens. When it cannot start,
# the harness is not run and the reason goes to harness.log; the gateway never heard from the
# bridge, so the runner reports the task as infrastructure, not as the harness's failure.
# -I -S: nothing from the environment, the working directory or a site directory is imported.
evolve_bridge_python=$(command -v python3 || command -v python)
if [ -z "$evolve_bridge_python" ]; then
  evolve_bridge_err="no python3 or python on PATH to run it"
elif evolve_bridge_err=$("$evolve_bridge_python" -I -S /evolve/bridge.py --port "$evolve_bridge_port" \
      --socket "$evolve_bridge_socket" --max-connections "$evolve_bridge_connections" 2>&1 < /dev/null); then
  evolve_bridge_err=""
elif [ -z "$evolve_bridge_err" ]; then
  evolve_bridge_err="bridge.py failed"
fi
if [ -n "$evolve_bridge_err" ]; then
  printf 'evolve: the model endpoint (loopback bridge) could not start: %s\n' "$evolve_bridge_err" \
    > "$evolve_out/harness.log"
  exit 125
fi
