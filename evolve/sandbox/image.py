"""The sandbox base image: used if present, pulled if possible, else built offline.

The offline build needs no registry: ``debootstrap`` installs a minimal
Debian from the distribution's packages into a folder, a few files are added
(the non-root ``agent`` user, system git settings), and the folder is
imported with ``docker import``. The tag is a hash of the recipe (what is
installed, never where it is downloaded from), so any change to the recipe
builds a new image and the mirror used does not.

The Debian mirror is ``EVOLVE_DEBIAN_MIRROR`` if set, else the host's own apt
sources (``/etc/apt/sources.list``, ``sources.list.d/*.list`` and deb822
``*.sources``), so a local mirror or proxy the host uses works here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from evolve.errors import SandboxError

if TYPE_CHECKING:  # pragma: no cover
    import docker

RECIPE = {
    "suite": "bookworm",
    "variant": "minbase",
    "packages": ["python3", "python3-pytest", "git", "patch", "procps", "ca-certificates"],
    "user": {"name": "agent", "uid": 1000, "gid": 1000, "home": "/home/agent"},
    "gitconfig": "[safe]\n\tdirectory = *\n[user]\n\tname = evolve\n\temail = evolve@localhost\n"
                 "[init]\n\tdefaultBranch = main\n",
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
    "version": 2,
}
REPOSITORY = "evolve-sandbox"
MIRROR_ENV = "EVOLVE_DEBIAN_MIRROR"
APT_SOURCES = Path("/etc/apt")
"""Where the host's apt sources are read from."""
DEBIAN_SUITES = ("buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                 "oldoldstable", "oldstable", "stable", "testing", "unstable")
"""Suite names that mark an apt source as a Debian archive (not Ubuntu's, not a third party's)."""


def base_image_tag(recipe: dict | None = None) -> str:
    """``evolve-sandbox:<first 12 hex of sha256(recipe)>`` (default: ``RECIPE``)."""
    digest = hashlib.sha256(json.dumps(recipe or RECIPE, sort_keys=True).encode()).hexdigest()[:12]
    return f"{REPOSITORY}:{digest}"


def ensure_image(client: "docker.DockerClient", image: str | None = None,
                 log: Callable[[str], None] = lambda _m: None) -> str:
    """Make ``image`` (default: the base image) available locally and return its reference.

    Order: already present -> pulled -> built offline (only for evolve's own
    base image).

    Raises:
        SandboxError: a foreign image that is neither present nor pullable, or
            a base-image build that cannot run here.
    """
    from docker.errors import DockerException, ImageNotFound

    ref = image or base_image_tag()
    with contextlib.suppress(ImageNotFound):  # expected: not here yet, so pull or build it below
        client.images.get(ref)
        return ref
    try:
        log(f"pulling {ref} ...")
        client.images.pull(ref)
        return ref
    except DockerException as e:
        if ref != base_image_tag():
            raise SandboxError(
                f"image {ref} is not present and could not be pulled ({e}). Build or load it "
                "(`docker load -i FILE`), or leave the task's image unset to use evolve's base image "
                "(`evolve sandbox build`)."
            ) from None
    log(f"{ref} cannot be pulled; building it offline with debootstrap")
    return build_base_image(client, log=log)


def build_base_image(client: "docker.DockerClient", *, mirror: str | None = None,
                     log: Callable[[str], None] = lambda _m: None) -> str:
    """Build the base image from Debian packages and ``docker import`` it.

    Takes about a minute; needs root, ``debootstrap`` and access to a Debian
    mirror: ``mirror``, else ``EVOLVE_DEBIAN_MIRROR``, else the host's apt
    sources (``host_mirror``).

    Raises:
        SandboxError: not root, no debootstrap, no mirror, or the bootstrap failed.
    """
    if os.geteuid() != 0:
        raise SandboxError("building the base image needs root (debootstrap). Run `sudo evolve sandbox build`.")
    if shutil.which("debootstrap") is None:
        raise SandboxError("debootstrap is not installed. Run `apt-get install -y debootstrap`, "
                           "then `evolve sandbox build`.")
    tag = base_image_tag()
    mirror = mirror or os.environ.get(MIRROR_ENV) or host_mirror()
    with tempfile.TemporaryDirectory(prefix="evolve-rootfs-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        cmd = ["debootstrap", f"--variant={RECIPE['variant']}", f"--include={','.join(RECIPE['packages'])}",
               RECIPE["suite"], str(root), mirror]
        log(" ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SandboxError(f"debootstrap failed (exit {proc.returncode}); last output:\n"
                               f"{(proc.stdout + proc.stderr)[-2000:]}\nCheck the mirror {mirror} "
                               f"or set {MIRROR_ENV} to another Debian mirror.")
        _customize(root)
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
        log(f"importing {tag}")
        repo, version = tag.split(":")
        changes = [f"ENV {e}" for e in RECIPE["env"]] + [f"LABEL evolve.recipe={version}", "WORKDIR /testbed"]
        client.api.import_image(src=str(tarball), repository=repo, tag=version, changes=changes)
    return tag


def _customize(root: Path) -> None:
    user = RECIPE["user"]
    with open(root / "etc/passwd", "a") as f:
        f.write(f"{user['name']}:x:{user['uid']}:{user['gid']}::{user['home']}:/bin/bash\n")
    with open(root / "etc/group", "a") as f:
        f.write(f"{user['name']}:x:{user['gid']}:\n")
    home = root / user["home"].lstrip("/")
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, user["uid"], user["gid"])
    testbed = root / "testbed"
    testbed.mkdir(exist_ok=True)
    os.chown(testbed, user["uid"], user["gid"])
    (root / "etc/gitconfig").write_text(RECIPE["gitconfig"])
    for path in root.rglob("*"):  # no setuid/setgid binaries: uid 1000 cannot become root
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o6000:
            path.chmod(path.stat().st_mode & ~0o6000)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (root / junk).glob("*"):
            if p.is_file():
                p.unlink()


def host_mirror(apt_dir: Path = APT_SOURCES, suite: str = RECIPE["suite"]) -> str:
    """The Debian archive the host's apt uses: the first ``deb`` source whose suite is ``suite``,
    else the first whose suite is any Debian release (``DEBIAN_SUITES``; ``-updates`` and
    ``-security`` suites do not count, their archives hold no release).

    Raises:
        SandboxError: no such source, with what to set instead.
    """
    sources = list(_apt_sources(apt_dir))
    for wanted in (lambda s: s == suite, lambda s: s in DEBIAN_SUITES):
        for uri, suites in sources:
            if any(wanted(s) for s in suites):
                return uri
    raise SandboxError(f"found no Debian archive in the host's apt sources ({apt_dir}/sources.list, "
                       f"{apt_dir}/sources.list.d/*.list, *.sources). Set {MIRROR_ENV} to a Debian mirror "
                       "(the URL that holds dists/ and pool/), e.g. your local mirror or apt proxy.")


def _apt_sources(apt_dir: Path):
    """``(uri, suites)`` of every enabled ``deb`` source, in apt's order: ``sources.list``, then
    ``sources.list.d`` by name (one-line ``*.list`` and deb822 ``*.sources``)."""
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:  # absent or unreadable: apt would not use it either
            continue
        yield from (_deb822_sources(text) if path.suffix == ".sources" else _one_line_sources(text))


def _one_line_sources(text: str):
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield words[0].rstrip("/"), [words[1].rstrip("/")]


def _deb822_sources(text: str):
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        suites = [s.rstrip("/") for s in fields.get("suites", "").split()]
        for uri in fields.get("uris", "").split():
            yield uri.rstrip("/"), suites
