"""`--executor ray` on a real Ray cluster on this machine: a head node and a worker node (``ray start``
processes, tests/ray_cluster.py), each with one ``evolve_sandbox`` slot, sharing the Docker engine.

Only the model's words are scripted (tests/fixtures/mini/solver.yaml). The evaluations run through
the real CLI as separate processes, so this test process never imports Ray; the worker node is
stopped by SIGKILL of all its processes while a task-run is on it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SOLVER_SCRIPT
from evolve.harness import template_dir

pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
from ray_cluster import RayCluster, _session_pids  # noqa: E402

pytestmark = pytest.mark.docker
EVOLVE = str(Path(sys.executable).parent / "evolve")
SCRIPTED = f"scripted/{SOLVER_SCRIPT}"
COMPARED = ("resolved", "failure_class", "FAIL_TO_PASS", "PASS_TO_PASS", "model_patch", "integrity_flags",
            "harness_exit_code", "usage")


@pytest.fixture(scope="module")
def cluster(base_image):
    c = RayCluster(head_slots=1)
    c.env["EVOLVE_HOME"] = str(c.temp / "home")  # the nodes' own: what the head ships is not there yet
    try:
        c.start()
        c.worker = c.add_node(1)
        yield c
    finally:
        c.close()


def evolve_eval(evalset: Path, harness: Path, runs: Path, *extra: str, background: bool = False,
                home: Path | None = None):
    cmd = [EVOLVE, "eval", "--harness", str(harness), "--evals", str(evalset), "--split", "search",
           "--model", SCRIPTED, "--workers", "2", "--repeats", "2", "--runs-dir", str(runs), *extra]
    env = {**os.environ, "COLUMNS": "200", **({"EVOLVE_HOME": str(home)} if home else {})}
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def results(runs: Path) -> tuple[Path, dict[tuple[str, int], dict]]:
    run_dir = next(p for p in runs.iterdir() if p.name.startswith("eval-"))
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    return run_dir, {(r["instance_id"], r["repeat"]): r for r in rows}


def run_containers(client, run_id: str) -> list:
    return client.api.containers(all=True, filters={"label": f"evolve.run={run_id}"})


def events(run_dir: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines()) if e["event"] == kind]


def with_image(evalset: Path, dest: Path, image: str) -> Path:
    """A copy of ``evalset`` whose tasks run in ``image``."""
    shutil.copytree(evalset, dest)
    for split in dest.glob("*.jsonl"):
        rows = [{**json.loads(line), "image": image} for line in split.read_text().splitlines()]
        split.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


def named_tiny_image(client, name: str) -> tuple[str, str]:
    """A new image ``evolve-test-<name>-<random>:1`` holding one two-byte file: (ref, image id)."""
    import uuid

    ref = f"evolve-test-{name}-{uuid.uuid4().hex[:8]}:1"
    return ref, tiny_image(client, ref, b"hi")


def untag(client, ref: str) -> None:
    from docker.errors import ImageNotFound

    try:
        client.images.remove(ref)
    except ImageNotFound:
        pass


def test_importing_evolve_does_not_import_ray():
    code = ("import sys, evolve.cli, evolve.evaluate, evolve.loop, evolve.executors, evolve.executors.local;"
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_executor_is_a_clear_error(mini_evalset, tmp_path):
    proc = subprocess.run([EVOLVE, "eval", "--evals", str(mini_evalset), "--executor", "slurm", "--model", SCRIPTED,
                           "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "unknown executor 'slurm'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_ray_address_where_no_cluster_answers_is_a_clear_error(mini_evalset, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([EVOLVE, "eval", "--evals", str(mini_evalset), "--executor", "ray", "--ray-address",
                           f"127.0.0.1:{port}", "--model", SCRIPTED, "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"no Ray cluster answers at '127.0.0.1:{port}'" in proc.stderr and "Traceback" not in proc.stderr


def test_ray_runs_on_both_nodes_and_matches_local(cluster, mini_evalset, base_image, docker_client, tmp_path):
    """The tasks' image exists only as the head's saved copy (a fresh node's engine lacks it): the
    nodes load it, once each at most, and the outcomes are the local executor's in that image. The
    harness declares a requirement (its agent runs in the base image): the head's environment is
    unpacked on the nodes, whose $EVOLVE_HOME lacks it."""
    import uuid

    from evolve.executors import images

    harness, home, fresh = tmp_path / "harness", tmp_path / "home", f"evolve-test-fresh-{uuid.uuid4().hex[:8]}:1"
    shutil.copytree(template_dir("minimal"), harness)
    with open(harness / "harness.yaml", "a") as f:
        f.write(f"\nimage: {base_image}\nrequirements: [tomli-w==1.0.0]\n")
    evalset = with_image(mini_evalset, tmp_path / "mini", fresh)
    docker_client.images.get(base_image).tag(fresh)
    try:
        evolve_eval(evalset, harness, tmp_path / "local", home=home)
        image_id = docker_client.images.get(fresh).id
        saved = images.saved_copy(docker_client, fresh, image_id, home)  # the head's copy, then gone from the engine
        untag(docker_client, fresh)
        proc = evolve_eval(evalset, harness, tmp_path / "ray", "--executor", "ray", "--ray-address", cluster.address,
                           home=home)
        assert docker_client.images.get(fresh).id == image_id  # loaded from the head's copy
    finally:
        untag(docker_client, fresh)
    assert "(ray)" in proc.stdout
    local_dir, local = results(tmp_path / "local")
    ray_dir, remote = results(tmp_path / "ray")
    assert set(remote) == set(local) and len(remote) == 4
    for key, row in remote.items():
        assert {k: row[k] for k in COMPARED} == {k: local[key][k] for k in COMPARED}, key
        assert local[key]["node"] is None
    assert remote[("mini__calc-1", 0)]["resolved"] and not remote[("mini__calc-2", 0)]["resolved"]
    # Two task-runs at once, one slot per node: both nodes took some; the node is recorded per result.
    assert {r["node"] for r in remote.values()} == set(cluster.node_ids())
    # The worker's gateway traced every model call, and the files came back into the same layout.
    for (iid, k), row in remote.items():
        files = sorted(p.name for p in (ray_dir / "tasks" / iid / f"r{k}").iterdir())
        assert files == sorted(p.name for p in (local_dir / "tasks" / iid / f"r{k}").iterdir())
        trace = (ray_dir / "tasks" / iid / f"r{k}" / "trace.jsonl").read_text().splitlines()
        assert len(trace) == row["usage"]["calls"] > 0
    meta = json.loads((ray_dir / "run.json").read_text())
    assert meta["executor"] == "ray" and meta["status"] == "finished"
    assert not run_containers(docker_client, ray_dir.name)
    # The head shipped its copy once; nodes loaded it, each at most once (both share this engine:
    # the second usually finds it present), and the events say which node loaded what.
    shipped, loaded = events(ray_dir, "image_shipped"), events(ray_dir, "image_loaded")
    assert len(shipped) == 1 and f"{saved.size} bytes" in shipped[0]["detail"]
    loaders = [e["detail"].split()[1] for e in loaded]
    assert 1 <= len(loaders) == len(set(loaders)) and set(loaders) <= set(cluster.node_ids())
    assert all(f"loaded {fresh} ({image_id})" in e["detail"] for e in loaded)
    (env_dir,) = (home / "envs").iterdir()
    unpacked = [e["detail"] for e in events(ray_dir, "env_loaded")]
    assert len(unpacked) == 1 and "unpacked the harness environment" in unpacked[0]  # one lock: one machine
    assert (cluster.temp / "home" / "envs" / env_dir.name / "evolve-env.json").is_file()


def test_an_image_copy_that_is_not_the_claimed_image_is_infra(cluster, mini_evalset, base_image, docker_client,
                                                               tmp_path):
    """Hostile: the head's saved copy of an image holds another image. Each node loads it, finds
    the other id, removes what it loaded and reports; the task-runs go to the other node, then end
    ``infra`` with that reason: never the agent's failure, and no image is left behind."""
    from evolve.executors import images

    (ref, other_id), home = named_tiny_image(docker_client, "bad"), tmp_path / "home"
    try:  # its copy claims the base image's id
        images.write_saved(home, ref, docker_client.images.get(base_image).id, docker_client.api.get_image(ref))
    finally:
        untag(docker_client, ref)
    evalset = with_image(mini_evalset, tmp_path / "mini", ref)
    try:
        evolve_eval(evalset, template_dir("minimal"), tmp_path / "ray", "--executor", "ray", "--ray-address",
                    cluster.address, home=home)
    finally:
        untag(docker_client, ref)
        untag(docker_client, other_id)
    run_dir, rows = results(tmp_path / "ray")
    assert len(rows) == 4
    for row in rows.values():
        assert row["failure_class"] == "infra" and row["harness_exit_code"] is None, row
        assert f"loading image {ref} on node" in row["error"] and f"loaded as image {other_id}" in row["error"]
    nodes = set(cluster.node_ids())
    assert {e["detail"].split(" on node ")[1].split()[0] for e in events(run_dir, "infra_retry")} <= nodes
    assert json.loads((run_dir / "summary.json").read_text())["infra"] == 4
    assert not any(i.id == other_id or ref in i.tags for i in docker_client.images.list(all=True))


def test_synth_validation_jobs_on_ray_keep_the_same_tasks(cluster, tmp_path):
    from test_synth import make_project as make_lib

    out = {}
    for kind in ("local", "ray"):
        extra = ["--executor", "ray", "--ray-address", cluster.address] if kind == "ray" else []
        dest = tmp_path / kind / "tinylib"
        proc = subprocess.run([EVOLVE, "evals", "synth", "--repo", str(make_lib(tmp_path / f"src-{kind}")),
                               "--name", "tinylib", "--out", str(dest), "--max-tasks", "3", "--seed", "7", *extra],
                              capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out[kind] = [(dest / f"{split}.jsonl").read_text() for split in ("search", "holdout")]
    assert out["ray"] == out["local"] and "tinylib__mut-" in out["ray"][0] + out["ray"][1]


def test_a_copy_corrupted_on_the_way_is_refused_before_docker_load(docker_client, tmp_path):
    """No cluster needed: the bytes a node received differ from the head's copy in one byte."""
    from evolve.executors import images

    ref, image_id = named_tiny_image(docker_client, "corrupt")
    try:
        saved = images.saved_copy(docker_client, ref, image_id, tmp_path)
        assert images.saved_copy(docker_client, ref, image_id, tmp_path) == saved  # made once
    finally:
        untag(docker_client, ref)
    data = bytearray(saved.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(images.LoadError, match=f"the copy of {ref} received from the head is corrupt"):
        images.load(docker_client, ref, image_id, saved.sha256, saved.size, [bytes(data)], home=tmp_path,
                    have=lambda: False)
    assert images.engine_id(docker_client, ref) is None
    assert images.load(docker_client, ref, image_id, saved.sha256, saved.size, saved.chunks(), home=tmp_path,
                       have=lambda: False)["bytes"] == saved.size
    untag(docker_client, ref)


def make_project(root: Path) -> Path:
    """A user's repo made by `evolve init`, on the wide eval set, scripted models, two generations."""
    import yaml

    from conftest import FIXTURES, build_wide_evalset, write_wide_solver

    evals = build_wide_evalset(root / "evals" / "wide")
    solver = write_wide_solver(root / "solver.yaml")
    repo = root / "proj"
    subprocess.run([EVOLVE, "init", str(repo)], cwd=root, check=True, capture_output=True)
    cfg = yaml.safe_load((repo / "evolve.yaml").read_text())
    cfg["models"]["solver"]["model"] = f"scripted/{solver}"
    cfg["models"]["optimizer"]["model"] = f"scripted/{FIXTURES / 'loop' / 'optimizer.yaml'}"
    cfg["evals"].update(name=str(evals), workers=2, harness_timeout_s=120, test_timeout_s=120)
    cfg["acceptance"]["rerun_discordant"] = 1
    cfg["budget"]["generations"] = 2
    (repo / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "configure"], cwd=repo,
                   check=True)
    return repo


def status_json(repo: Path) -> dict:
    return json.loads(subprocess.run([EVOLVE, "status", "--json"], cwd=repo, capture_output=True, text=True,
                                     check=True).stdout)


def test_run_decides_the_same_under_both_executors(cluster, base_image, tmp_path):
    """The Ray run is killed (kill -9) before generation 2's evaluation and resumed with
    `evolve run --resume`: it must still decide exactly as the uninterrupted local run."""
    decisions = {}
    for kind in ("local", "ray"):
        repo = make_project(tmp_path / kind)
        extra = ["--executor", "ray", "--ray-address", cluster.address] if kind == "ray" else []
        env = {**os.environ, "COLUMNS": "200"}
        if kind == "ray":
            killed = subprocess.run([EVOLVE, "run", *extra], cwd=repo, capture_output=True, text=True, timeout=900,
                                    env={**env, "EVOLVE_TEST_KILL_AT": "evaluate@2"})
            assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
            extra += ["--resume", status_json(repo)["state"]["run_id"]]
        proc = subprocess.run([EVOLVE, "run", *extra], cwd=repo, capture_output=True, text=True, timeout=900,
                              env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        status = status_json(repo)
        state = status["state"]
        decisions[kind] = {"gens": [(g["status"], g["delta"], sorted(g["fixed"]), sorted(g["broken"]))
                                    for g in status["generations"]],
                           "rates": (state["baseline_rate"], state["best_rate"], state["holdout"]["baseline"],
                                     state["holdout"]["best"])}
        evals = [json.loads(line) for p in (repo / "runs" / state["run_id"] / "evals").glob("*/results.jsonl")
                 for line in p.read_text().splitlines()]
        assert evals and all((r["node"] is None) == (kind == "local") for r in evals if not r["cached"])
    assert decisions["ray"] == decisions["local"]
    assert [g[0] for g in decisions["ray"]["gens"]] == ["accepted", "rejected"]


@pytest.fixture(scope="module")
def shipped(docker_client, base_image, tmp_path_factory):
    """``(ref, image id, head home)``: a tag of the base image that only the head's saved copy
    holds (made once for the module; each test untags it from the engine before use)."""
    import uuid

    from evolve.executors import images

    ref, home = f"evolve-test-shipped-{uuid.uuid4().hex[:8]}:1", tmp_path_factory.mktemp("head-home")
    docker_client.images.get(base_image).tag(ref)
    try:
        image_id = docker_client.images.get(ref).id
        images.saved_copy(docker_client, ref, image_id, home)
    finally:
        untag(docker_client, ref)
    yield ref, image_id, home
    untag(docker_client, ref)


def tiny_image(client, ref: str, content: bytes) -> str:
    """A one-file image tagged ``ref`` (its id depends on ``content``)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("content")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    repo, tag = ref.split(":")
    client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
    return client.images.get(ref).id


def loaded_by_evolve(client, ref: str, node_home: Path, head_home: Path) -> str:
    """Ship ``ref`` (present in the engine) as the head does and load it as a node does
    (``images.load``, recorded in ``node_home``): the engine's tag is gone in between."""
    from evolve.executors import images

    image_id = client.images.get(ref).id
    saved = images.saved_copy(client, ref, image_id, head_home)
    untag(client, ref)
    assert images.load(client, ref, image_id, saved.sha256, saved.size, saved.chunks(), home=node_home,
                       have=lambda: False) is not None
    return image_id


def age(node_home: Path, image_id: str, hours: float) -> None:
    """Make the node's record of ``image_id`` say it was last used ``hours`` ago."""
    from evolve.executors import images, loaded_images

    with images.node_lock(node_home):
        path = loaded_images.record_path(node_home)
        records = json.loads(path.read_text())
        records[image_id]["last_used"] = time.time() - hours * 3600
        path.write_text(json.dumps(records))


def test_ray_client_address_runs_like_local_and_prunes_old_loads(cluster, mini_evalset, shipped, docker_client,
                                                                 tmp_path):
    """``ray://`` (Ray Client: the evolve process is no node of the cluster; everything goes through
    the head's client server): the same outcomes as the local executor, node ids recorded, the
    task image shipped from the evolve process's saved copy through the client connection. The
    node's first task-run removes an image evolve loaded there 100 hours ago (default
    image_ttl_hours 72) and records the image it just loaded."""
    import uuid

    from evolve.executors import loaded_images

    ref, image_id, head_home = shipped
    node_home = cluster.temp / "home"
    stale_ref = f"evolve-test-stale-{uuid.uuid4().hex[:8]}:1"
    tiny_image(docker_client, stale_ref, b"stale")
    stale_id = loaded_by_evolve(docker_client, stale_ref, node_home, tmp_path / "h")
    age(node_home, stale_id, 100)
    evalset = with_image(mini_evalset, tmp_path / "mini", ref)
    untag(docker_client, ref)
    try:
        evolve_eval(mini_evalset, template_dir("minimal"), tmp_path / "local", "--repeats", "1")
        proc = evolve_eval(evalset, template_dir("minimal"), tmp_path / "ray", "--repeats", "1", "--executor", "ray",
                           "--ray-address", cluster.client_address, home=head_home)
        assert docker_client.images.get(ref).id == image_id  # loaded from the head's copy
    finally:
        untag(docker_client, ref)
        untag(docker_client, stale_ref)
    assert "(ray)" in proc.stdout
    _, local = results(tmp_path / "local")
    ray_dir, remote = results(tmp_path / "ray")
    assert set(remote) == set(local) == {("mini__calc-1", 0), ("mini__calc-2", 0)}
    for key, row in remote.items():
        assert {k: row[k] for k in COMPARED} == {k: local[key][k] for k in COMPARED}, key
    assert {r["node"] for r in remote.values()} <= set(cluster.node_ids()) and all(r["node"] for r in remote.values())
    assert len(events(ray_dir, "image_shipped")) == 1 and events(ray_dir, "image_loaded")
    # The stale load is gone, with an event saying so; the one just made is recorded as used now.
    assert not any(i.id == stale_id for i in docker_client.images.list(all=True))
    pruned = [e["detail"] for e in events(ray_dir, "images_pruned")]
    assert any(f"removed {stale_ref}" in d for d in pruned), pruned
    records = loaded_images.read(node_home)
    assert stale_id not in records and ref in records[image_id]["refs"]
    assert time.time() - records[image_id]["last_used"] < 3600


def test_sandbox_sweep_removes_only_old_images_evolve_loaded(cluster, docker_client, tmp_path):
    """`evolve sandbox sweep --images --executor ray` on every node: of the images evolve loaded
    onto a node, the one unused for 100 hours goes; the one used a moment ago stays, as do the one
    a running container uses and those the node had before evolve loaded a tag of them (evolve's
    tag goes only while another tag keeps the image)."""
    import uuid

    from evolve.executors import loaded_images

    u, node_home, head_home = uuid.uuid4().hex[:8], cluster.temp / "home", tmp_path / "head"
    refs = {name: f"evolve-test-{name}-{u}:1" for name in ("pre", "pre2", "old", "used", "fresh")}
    ids = {name: tiny_image(docker_client, ref, name.encode()) for name, ref in refs.items()}
    # tags evolve loads for images the node already had; pre2's own tag is then removed by its user
    extra = {name: f"evolve-test-{name}-{u}:evolve" for name in ("pre", "pre2")}
    container = None
    try:
        for name in ("pre", "pre2"):
            docker_client.images.get(refs[name]).tag(extra[name])
            assert loaded_by_evolve(docker_client, extra[name], node_home, head_home) == ids[name]
        untag(docker_client, refs["pre2"])
        for name in ("old", "used", "fresh"):
            assert loaded_by_evolve(docker_client, refs[name], node_home, head_home) == ids[name]
        records = loaded_images.read(node_home)
        assert records[ids["pre"]]["had_before"] and not records[ids["old"]]["had_before"]
        for name in ("pre", "pre2", "old", "used"):
            age(node_home, ids[name], 100)
        # A running container of "used": the host's /usr, read-only, gives it a sleep to run.
        mounts = {p: {"bind": p, "mode": "ro"} for p in ("/usr", "/lib", "/lib64") if Path(p).exists()}
        container = docker_client.containers.run(refs["used"], ["/usr/bin/sleep", "300"], detach=True,
                                                 volumes=mounts, network_mode="none",
                                                 name=f"evolve-test-used-{u}")
        proc = subprocess.run([EVOLVE, "sandbox", "sweep", "--images", "--executor", "ray", "--ray-address",
                               cluster.client_address], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "COLUMNS": "300"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        have = {i.id: i.tags for i in docker_client.images.list(all=True)}
        assert ids["old"] not in have and f"removed {refs['old']}" in proc.stdout
        assert have[ids["pre"]] == [refs["pre"]]  # the node's own image and tag stay; evolve's tag went
        assert have[ids["pre2"]] == [extra["pre2"]]  # its only tag is evolve's: removing it would remove the image
        assert have[ids["used"]] == [refs["used"]] and "a running container uses it" in proc.stdout
        assert have[ids["fresh"]] == [refs["fresh"]]
        records = loaded_images.read(node_home)
        assert ids["old"] not in records and ids["pre"] not in records
        assert ids["used"] in records and ids["fresh"] in records
        assert all(f"node {n}: removed" in proc.stdout for n, alive in cluster.node_ids().items() if alive)
    finally:
        if container is not None:
            container.remove(force=True)
        for ref in [*refs.values(), *extra.values()]:
            untag(docker_client, ref)
        for image_id in ids.values():
            untag(docker_client, image_id)


EVALUATE_MANY = """
import json, sys
from pathlib import Path
from evolve.config import EvalSettings
from evolve.evalsets.registry import load_evalset
from evolve.evaluator import DockerEvaluator
from evolve.executors import make_executor
from evolve.harness import resolve_harness, template_dir

evalset, address, script, out = sys.argv[1:5]
settings = EvalSettings(model=f"scripted/{script}", harness_timeout_s=120, test_timeout_s=120)
evaluator = DockerEvaluator(load_evalset(evalset), settings, out_dir=Path(out) / "evals", cache_dir=Path(out) / "cache",
                            workers=2, sandbox_run_id="many", executor=make_executor("ray", address))
harness = resolve_harness(str(template_dir("minimal")), workdir=Path(out) / "harnesses")
reports = evaluator.evaluate_many([(harness, ["mini__calc-1"], 0, "g001-c1-r0"),
                                   (harness, ["mini__calc-2"], 0, "g001-c2-r0")], "search")
print(json.dumps([[(r.instance_id, r.resolved, r.is_infra) for r in rep.results] for rep in reports]))
"""


def test_prune_removes_an_old_load_a_newer_one_untagged_and_trusts_no_unreadable_record(docker_client, tmp_path):
    """No cluster needed (``loaded_images.prune`` as a node runs it): a tag loaded again at a new
    image id leaves the old image untagged; once old, it goes and the new one stays. A record file
    that cannot be read removes nothing."""
    import uuid

    from evolve.executors import images, loaded_images

    ref, home = f"evolve-test-retag-{uuid.uuid4().hex[:8]}:1", tmp_path / "node"
    ids = []
    try:
        for content in (b"first", b"second"):
            tiny_image(docker_client, ref, content)
            ids.append(loaded_by_evolve(docker_client, ref, home, tmp_path / f"head-{content.decode()}"))
        assert docker_client.images.get(ids[0]).tags == []  # the second load took its tag
        age(home, ids[0], 100)
        with images.node_lock(home):
            done = loaded_images.prune(docker_client, home, 72 * 3600)
        assert done == [f"removed untagged {ids[0][:19]}"], done
        assert not any(i.id == ids[0] for i in docker_client.images.list(all=True))
        assert docker_client.images.get(ref).id == ids[1] and set(loaded_images.read(home)) == {ids[1]}
        loaded_images.record_path(home).write_text("{not json")
        with images.node_lock(home):
            assert loaded_images.prune(docker_client, home, 0) == []
        assert docker_client.images.get(ref).id == ids[1]
    finally:
        untag(docker_client, ref)
        for image_id in ids:
            untag(docker_client, image_id)


def test_evaluations_run_together_ship_an_image_once(cluster, mini_evalset, shipped, docker_client, tmp_path):
    """``evaluate_many`` (K candidates) on Ray: one executor per evaluation, both starting at once
    on nodes that lack the task image; the head puts its copy into the object store once for both."""
    ref, image_id, head_home = shipped
    evalset = with_image(mini_evalset, tmp_path / "mini", ref)
    untag(docker_client, ref)
    try:
        proc = subprocess.run([sys.executable, "-c", EVALUATE_MANY, str(evalset), cluster.address, str(SOLVER_SCRIPT),
                               str(tmp_path / "out")], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "EVOLVE_HOME": str(head_home)})
    finally:
        untag(docker_client, ref)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [[["mini__calc-1", True, False]],
                                                                [["mini__calc-2", False, False]]]
    runs = sorted((tmp_path / "out" / "evals").iterdir())
    assert len(runs) == 2
    shipped_events = [e for run in runs for e in events(run, "image_shipped")]
    assert len(shipped_events) == 1, shipped_events
    assert all(e["detail"].split()[1] in cluster.node_ids() for run in runs for e in events(run, "image_loaded"))


def test_worker_node_dying_mid_evaluation_loses_nothing(cluster, mini_evalset, docker_client, tmp_path):
    """Runs last in this module: it kills the cluster's worker node."""
    harness = tmp_path / "sleepy"
    shutil.copytree(template_dir("minimal"), harness)
    spec = (harness / "harness.yaml").read_text().replace("entrypoint: python3 agent.py",
                                                           "entrypoint: sleep 12 && python3 agent.py")
    (harness / "harness.yaml").write_text(spec)
    head_id = cluster.head_id()
    proc = evolve_eval(mini_evalset, harness, tmp_path / "ray", "--executor", "ray", "--ray-address",
                       cluster.address, background=True)
    try:
        # Wait until one of the worker node's processes has a container (its agent phase is running).
        deadline, victim = time.monotonic() + 180, None
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            pids = {str(p) for p in _session_pids(cluster.worker.proc.pid)}
            for c in docker_client.api.containers(filters={"label": "evolve.managed=1"}):
                if c["Labels"].get("evolve.pid") in pids:
                    victim = c
            time.sleep(0.3)
        assert victim is not None, "no task-run reached the worker node"
        cluster.worker.kill()
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    run_dir, rows = results(tmp_path / "ray")
    assert victim["Labels"]["evolve.run"] == run_dir.name
    # Every job has a scored result (the lost one was re-run elsewhere), with the usual outcomes.
    assert len(rows) == 4 and not any(r["failure_class"] == "infra" for r in rows.values())
    assert all(rows[("mini__calc-1", k)]["resolved"] and not rows[("mini__calc-2", k)]["resolved"] for k in (0, 1))
    # The lost task-run was infrastructure: an event, then a second try on the head node.
    retries = [e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
               if e["event"] == "infra_retry"]
    assert retries and all(e["detail"].startswith("ray attempt 1:") for e in retries)
    for e in retries:
        row = rows[(e["instance_id"], e["repeat"])]
        assert row["attempts"] >= 2 and row["node"] == head_id
    alive = cluster.node_ids()
    assert alive[head_id] and not any(alive[n] for n in alive if n != head_id)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["scored"] == 4 and summary["infra"] == 0
    # The dead node's container was swept with the run.
    assert not run_containers(docker_client, run_dir.name)
