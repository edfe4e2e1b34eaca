"""``evolve sandbox build|sweep``: the Docker sandbox image, and containers left behind."""

from __future__ import annotations

from typing import Optional

import typer
from rich.text import Text

from evolve.cli.common import console, plain
from evolve.errors import ConfigError


def sandbox_build(image: Optional[str] = typer.Option(None, help="Image to make available; default: "
                                                                 "evolve's base image."),
                  mirror: Optional[str] = typer.Option(None, metavar="URL", help="Debian mirror to build the base "
                                                       "image from (default: EVOLVE_DEBIAN_MIRROR, else the host's "
                                                       "apt sources); builds it unless present, without pulling.")
                  ) -> None:
    """Make the sandbox image available: use it if present, pull it, or build it offline."""
    from evolve.sandbox.docker import docker_client
    from evolve.sandbox.image import base_image_tag, build_base_image, ensure_image

    def log(m: str) -> None:
        plain(m, "dim")

    client = docker_client()
    if mirror is None:
        ref = ensure_image(client, image, log=log)
    elif image not in (None, base_image_tag()):
        raise ConfigError(f"--mirror builds evolve's base image ({base_image_tag()}), not {image}: "
                          "drop --image, or build that image yourself")
    elif client.images.list(name=base_image_tag()):
        ref = base_image_tag()
        log(f"{ref} is present; `docker rmi {ref}` first to build it again from {mirror}")
    else:
        ref = build_base_image(client, mirror=mirror, log=log)
    console.print(Text.assemble("sandbox image ready: ", (ref, "bold")))


def sandbox_sweep() -> None:
    """Remove containers left by evolve processes that are no longer alive."""
    from evolve.sandbox.docker import docker_client, sweep_stale

    console.print(f"removed {sweep_stale(docker_client())} stale container(s)")
