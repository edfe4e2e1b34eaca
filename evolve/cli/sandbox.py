"""``evolve sandbox build|sweep``: the Docker sandbox image, and containers left behind."""

from __future__ import annotations

from typing import Optional

import typer
from rich.text import Text

from evolve.cli.common import RAY_ADDRESS_HELP, console, plain
from evolve.errors import ConfigError
from evolve.config import IMAGE_TTL_HOURS


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


def sandbox_sweep(
    images: bool = typer.Option(False, "--images", help="Also remove images that evolve loaded from a head's "
                                "copy (--executor ray) and that no task-run used for --image-ttl-hours. Images "
                                "evolve did not load, or that a container uses, are kept."),
    image_ttl_hours: float = typer.Option(IMAGE_TTL_HOURS, min=0, help="With --images: hours an image evolve "
                                          "loaded may go unused before it is removed; 0 removes every one no "
                                          "container uses."),
    executor: str = typer.Option("local", help="local: this machine's engine; ray: every node of the Ray "
                                 "cluster that declares evolve_sandbox."),
    ray_address: str = typer.Option("auto", help=RAY_ADDRESS_HELP),
) -> None:
    """Remove containers left by evolve processes that are no longer alive (and, with --images,
    images evolve loaded that went unused), here or on every node of a Ray cluster."""
    from evolve.executors import make_executor
    from evolve.executors.loaded_images import sweep_here

    ttl = image_ttl_hours if images else None
    if executor == "local":
        done = {"this machine": sweep_here(ttl)}
    elif executor == "ray":
        done = make_executor("ray", ray_address).sweep_cluster(ttl)
    else:
        raise ConfigError(f"unknown executor {executor!r}: use local or ray")
    for where, (containers, lines) in done.items():
        name = where if executor == "local" else f"node {where}"
        console.print(f"{name}: removed {containers} stale container(s)")
        for line in lines:
            plain(f"{name}: {line}")
        if images and not lines:
            plain(f"{name}: no image evolve loaded is older than {image_ttl_hours:g} h", "dim")
