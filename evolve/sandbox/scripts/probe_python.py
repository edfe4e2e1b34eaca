# Prints, as one JSON line, what evolve needs to know of an image's python3 to resolve wheels for
# it (evolve.harness_env.probe_image): version, implementation, ABI tag, C library, machine, PATH.
import json
import os
import platform
import sys
import sysconfig

impl = sys.implementation.name
short = {"cpython": "cp", "pypy": "pp"}.get(impl, impl)
nodot = "%d%d" % sys.version_info[:2]
abiflags = getattr(sys, "abiflags", "") or ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else "")
try:
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
except (ValueError, OSError, AttributeError):
    libc = ""
print(json.dumps({
    "python_version": "%d.%d.%d" % sys.version_info[:3],
    "implementation": short,
    "abi": (short + nodot + abiflags) if short == "cp" else sysconfig.get_config_var("SOABI") or "none",
    "libc": libc,
    "machine": platform.machine(),
    "executable": os.path.realpath(sys.executable),
    "path": os.environ.get("PATH", ""),
}))
