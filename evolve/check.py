"""Checks a candidate harness must pass before a full evaluation.

The harness is LLM-written code, so even compiling it happens inside a
sandbox, never on the host.
"""

from __future__ import annotations

import shlex

from evolve.config import SandboxLimits
from evolve.harness import Harness


def compile_in_sandbox(harness: Harness, run_id: str, limits: SandboxLimits, image: str | None = None) -> str | None:
    """The compiler's complaint about the harness's Python files, or None if they all compile.

    Raises:
        InfraError: Docker failed.
    """
    from evolve.sandbox.docker import Sandbox, docker_client
    from evolve.sandbox.image import ensure_image

    files = {str(p.relative_to(harness.root)): p.read_bytes()
             for p in sorted(harness.root.rglob("*")) if p.is_file()}
    sources = [name for name in files if name.endswith(".py")]
    if not sources:
        return None
    client = docker_client()
    with Sandbox(client, ensure_image(client, image), run_id=run_id, limits=limits) as box:
        box.put_files("/tmp/harness", files)
        quoted = " ".join(shlex.quote(f"./{name}") for name in sources)
        res = box.exec(f"cd /tmp/harness && python3 -m py_compile {quoted}", timeout_s=120)
    if res.exit_code == 0:
        return None
    return res.output.strip()[-1500:] or f"py_compile exited {res.exit_code}"
