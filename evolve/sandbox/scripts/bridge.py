"""evolve's loopback bridge: TCP 127.0.0.1:PORT inside the sandbox, carried to the gateway's unix socket.

Started by the entrypoint's wrapper before the harness (``evolve.runner``), as the sandbox user,
with the container's own python3 (standard library only) as ``python3 -I -S``: nothing from the
environment, the working directory or a site directory is imported, and no ``site`` start-up
(about 5 ms of a sandbox's CPU less, with ``argparse`` not imported). With it the harness reaches the model
at ``OPENAI_BASE_URL=http://127.0.0.1:PORT/v1`` with any HTTP client (the openai SDK, litellm,
httpx, requests); the container still has no network (loopback works without one).

    python3 -I -S bridge.py --port PORT --socket /evolve/gw/gateway.sock --max-connections N [--foreground]

- The bytes are carried as they are, both ways; the gateway on the host does everything else
  (keys, limits, trace), so the harness gains nothing by going around the bridge.
- Start-up: bind and listen, then ``GET /health`` on the gateway with the ``X-Evolve-Bridge``
  header (the gateway notes that the bridge is up; the runner reports a task whose bridge never
  got there as infrastructure). Then, unless ``--foreground``, the process forks: the parent
  exits 0 once the port listens (exit 1 and a message on stderr if it cannot), the child serves
  with its standard streams on /dev/null.
- Bounded: at most N connections at once (more wait in the listen backlog: N is above the
  gateway's own limit, so the gateway's 429 and idle reaping decide), two threads and two
  64 KiB buffers each.
- It ends with the task: the runner kills every process of the sandbox user once the harness
  exits, and the container is removed.
"""

import contextlib
import os
import socket
import sys
import threading

PIECE = 64 * 1024
CONNECT_TIMEOUT_S = 10.0
BACKLOG = 64


def fail(message):
    sys.stderr.write(f"evolve bridge: {message}\n")
    sys.exit(1)


def connect(path):
    """A connected socket to the gateway at ``path`` (a unix socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(path)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def announce(path, port):
    """``GET /health`` with the bridge's header; raises OSError unless the gateway answers 200."""
    with connect(path) as sock:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Evolve-Bridge: {port}\r\n"
                     "Connection: close\r\n\r\n".encode("ascii"))
        head = b""
        while b"\r\n" not in head and len(head) < 4096:
            piece = sock.recv(4096)
            if not piece:
                break
            head += piece
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise OSError(f"the gateway answered {head[:80]!r} to GET /health")


def shut(sock, how):
    # Expected: the peer (or the other pump) may already have ended or closed this socket, and
    # shutdown then raises ENOTCONN/EBADF; the socket is as shut as it can be either way.
    with contextlib.suppress(OSError):
        sock.shutdown(how)


def pump(src, dst, client, done):
    """Carry ``src`` to ``dst`` until ``src`` ends; then end ``dst``'s writing side. When the gateway's
    side ends first, the client's connection is ended too (nothing more can come for it)."""
    try:
        while True:
            data = src.recv(PIECE)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        shut(dst, socket.SHUT_RDWR)
        shut(src, socket.SHUT_RDWR)
    finally:
        shut(dst, socket.SHUT_WR)
        if src is not client:
            shut(client, socket.SHUT_RDWR)
        done()


def serve_one(client, path, slots):
    try:
        upstream = connect(path)
    except OSError:
        body = b'{"error": {"type": "gateway_closed", "message": "the task is over: the gateway is gone", ' \
               b'"code": "gateway_closed"}}'
        # Expected: the client may have hung up already; there is no one left to tell.
        with contextlib.suppress(OSError):
            client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        client.close()
        slots.release()
        return
    left = [2]
    lock = threading.Lock()

    def done():
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            client.close()
            upstream.close()
            slots.release()

    back = threading.Thread(target=pump, args=(upstream, client, client, done), daemon=True)
    try:
        back.start()
    except RuntimeError:  # no thread to spare: refuse this connection
        client.close()
        upstream.close()
        slots.release()
        return
    pump(client, upstream, client, done)


def serve(listener, path, max_connections):
    # A thread woken by data waits for the GIL at most this long (default 5 ms) when another holds it.
    sys.setswitchinterval(0.0005)
    slots = threading.BoundedSemaphore(max_connections)
    while True:
        slots.acquire()
        try:
            client, _ = listener.accept()
        except OSError:
            slots.release()
            continue
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            threading.Thread(target=serve_one, args=(client, path, slots), daemon=True).start()
        except RuntimeError:
            client.close()
            slots.release()


def options(argv):
    """``(port, socket path, max connections, foreground)`` from the command
    line (this module's docstring); exits 2 with a message on a bad one. Not argparse: importing it
    costs each sandbox about 4 ms of CPU."""
    values = {"--port": None, "--socket": None, "--max-connections": None}
    foreground = False
    i = 0
    while i < len(argv):
        if argv[i] == "--foreground":
            foreground = True
            i += 1
        elif argv[i] in values and i + 1 < len(argv):
            values[argv[i]] = argv[i + 1]
            i += 2
        else:
            sys.stderr.write(f"evolve bridge: unexpected argument {argv[i]!r}; usage: bridge.py --port PORT "
                             "--socket PATH --max-connections N [--foreground]\n")
            sys.exit(2)
    missing = [name for name, value in values.items() if value is None]
    if missing:
        sys.stderr.write(f"evolve bridge: missing {', '.join(missing)}\n")
        sys.exit(2)
    try:
        port, connections = int(values["--port"]), int(values["--max-connections"])
    except ValueError:
        sys.stderr.write("evolve bridge: --port and --max-connections take integers\n")
        sys.exit(2)
    return port, values["--socket"], connections, foreground


def main():
    port, path, max_connections, foreground = options(sys.argv[1:])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(BACKLOG)
    except OSError as e:
        fail(f"cannot listen on 127.0.0.1:{port}: {e}")
    try:
        announce(path, port)
    except OSError as e:
        fail(f"cannot reach the model gateway at {path}: {e}")
    if not foreground:
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() != 0:
            os._exit(0)  # the parent: the port listens, the child serves it
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    serve(listener, path, max(1, max_connections))


if __name__ == "__main__":
    main()
