"""``evolve report`` on a real loop run (scripted optimizer words, git, run files; evaluations through
``TaskFilesEvaluator`` behind the loop's seam), with hostile text from the run in a task id, the
hypothesis, the diff and a trajectory: it must show as text and never run. The browser test opens
the report in headless Chromium (Debian's package) over the DevTools Protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from browser import Browser, chromium_path
from loop_support import OPTIMIZER, TaskFilesEvaluator, make_loop, make_project

from evolve.report_html.render import report_run, task_slug

HOSTILE_ID = 'wide__f-1<img src=x onerror="window.__pwned=1">'
HOSTILE_TRAJECTORY = '</pre><script>window.__pwned=2</script><img src=x onerror="window.__pwned=3">'
HOSTILE_HYPOTHESIS = ' <script>window.__pwned=4</script>'
HOSTILE_LINE = '<script>window.__pwned=5</script>'
ARTIFACTS = Path(os.environ.get("EVOLVE_TEST_ARTIFACTS", Path(__file__).parent.parent / "runs" / "test-artifacts"))


def hostile_project(root: Path) -> Path:
    """``make_project`` with hostile words: a task id, the PLAN-A hypothesis and its diff carry markup."""
    repo = make_project(root)
    search = root / "evals" / "wide" / "search.jsonl"
    search.write_text(search.read_text().replace('"wide__f-1"', json.dumps(HOSTILE_ID)))
    script = OPTIMIZER.read_text().replace("PLAN-A: telling", "PLAN-A:" + HOSTILE_HYPOTHESIS.replace('"', "'")
                                           + " telling")
    script = script.replace("REPRODUCE FIRST: run the failing behaviour before you edit anything.",
                            "REPRODUCE FIRST: run the failing behaviour before you edit anything. " + HOSTILE_LINE)
    optimizer = root / "optimizer.yaml"
    optimizer.write_text(script)
    cfg = yaml.safe_load((repo / "evolve.yaml").read_text())
    cfg["models"]["optimizer"]["model"] = f"scripted/{optimizer}"
    (repo / "evolve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "hostile"], cwd=repo,
                   check=True)
    return repo


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """(repo, run_id, report index): three generations (accepted, rejected, refused) and the held-out check."""
    root = tmp_path_factory.mktemp("night")
    repo = hostile_project(root)
    loop, close = make_loop(repo)
    loop.evaluator = TaskFilesEvaluator(loop.store.dir / "evals", trajectory_text=HOSTILE_TRAJECTORY)
    try:
        loop.run()
    finally:
        close()
    return repo, loop.run_id, report_run(repo / "runs", loop.run_id, repo_root=repo)


def test_report_files_and_data(night):
    repo, run_id, index = night
    out = index.parent
    data = json.loads((out / "report.json").read_text())
    assert [g["status"] for g in data["generations"]] == ["accepted", "rejected", "refused"]
    g1 = data["generations"][0]
    assert HOSTILE_ID in g1["fixed"] and len(g1["fixed"]) == 6 and "REPRODUCE FIRST" in g1["diff"]
    assert data["heatmap"]["columns"] == ["base", "g001 accepted"]
    assert data["heatmap"]["z"] == [[0.0, 1.0]] * 6
    assert data["cost"]["optimizer"] and data["cost"]["optimizer"][-1][1] == 0.0  # scripted: free
    assert data["run"]["spent_usd"] > 0  # every fresh task-run's solver cost, as the run counted it:
    assert data["cost"]["solver"][-1][1] == pytest.approx(data["run"]["spent_usd"])
    assert data["run"]["holdout"]["best"] == 1.0
    page = out / "tasks" / "g001" / f"{task_slug(HOSTILE_ID)}.html"
    assert page.is_file() and "/" not in task_slug(HOSTILE_ID) and "<" not in task_slug(HOSTILE_ID)
    copies = sorted(p.name for p in (page.parent / task_slug(HOSTILE_ID)).iterdir())
    assert "g001-child-r0-r0-trajectory.json.txt" in copies and "g001-parent-r0-r0-test_output.txt.txt" in copies
    html = index.read_text()
    for div in ("plot-score", "plot-lineage", "plot-cost", "plot-heatmap"):
        assert f'id="{div}"' in html
    assert 'id="g001"' in html and 'id="g003"' in html and "edits refused" in html
    # hostile words are text: escaped everywhere they are shown
    for path in [index, *out.glob("tasks/*/*.html")]:
        text = path.read_text()
        assert "<script>window.__pwned" not in text and "<img src=x" not in text, path
    assert "&lt;script&gt;window.__pwned=4" in html  # the hypothesis, shown
    assert "window.__pwned=2" in page.read_text()  # the trajectory, shown as text


def test_report_regenerates_from_the_run_folder_elsewhere(night, tmp_path):
    repo, run_id, _ = night
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    out = tmp_path / "elsewhere"
    proc = subprocess.run([sys.executable, "-c", "from evolve.cli import main; main()", "report", "--out", str(out)],
                          cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert str(out / "index.html") in proc.stdout.replace("\n", "")
    assert json.loads((out / "report.json").read_text())["run"]["run_id"] == run_id
    bad = subprocess.run([sys.executable, "-c", "from evolve.cli import main; main()", "report", "no-such-run"],
                         cwd=repo, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "no run 'no-such-run'" in bad.stderr


@pytest.mark.skipif(chromium_path() is None and os.environ.get("CI") != "true",
                    reason="no chromium (scripts/setup.sh installs Debian's package)")
def test_report_in_a_real_browser(night, tmp_path):
    repo, run_id, index = night
    shot = ARTIFACTS / f"report-{run_id}.png"
    with Browser(tmp_path / "profile") as b:
        b.open(index.as_uri())
        rendered = b.js("""(() => { const out = {};
            for (const id of ['plot-score', 'plot-lineage', 'plot-cost', 'plot-heatmap']) {
              const el = document.getElementById(id);
              out[id] = el ? el.querySelectorAll('svg.main-svg path, svg.main-svg rect, canvas').length : -1; }
            return out; })()""")
        assert all(n > 0 for n in rendered.values()), rendered
        assert b.js("document.querySelectorAll('#plot-heatmap .hm image, #plot-heatmap .heatmaplayer image').length") >= 1
        print(f"\nscreenshot: {b.screenshot(shot)}")
        assert shot.stat().st_size > 10_000
        # a generation's card: the nav chip leads to it
        b.js("document.querySelector('nav a[href=\"#g002\"]').click()")
        assert b.js("location.hash") == "#g002"
        assert b.js("document.getElementById('g002').querySelector('.badge').textContent") == "rejected"
        assert b.js("window.scrollY") > 0  # scrolled to the card, which is in view
        assert 0 <= b.js("document.getElementById('g002').getBoundingClientRect().top") < b.js("innerHeight")
        assert b.js("window.__pwned === undefined")
        # a task link opens that task's page, whose file links work offline
        b.click(f"#g001 a.task-link[href$='/{task_slug(HOSTILE_ID)}.html']")
        assert b.js("document.querySelector('h1').textContent") == HOSTILE_ID
        assert b.js("window.__pwned === undefined")
        assert "window.__pwned=2" in b.js("document.querySelector('pre.file').textContent")
        b.click("section.task-run a[href$='trajectory.json.txt']")
        assert "</pre><script>window.__pwned=2</script>" in b.js("document.body.innerText")  # plain text
        assert b.js("window.__pwned === undefined")
    assert b.errors == []


def test_task_files_are_linked_or_cut_within_a_budget(tmp_path):
    from evolve.report_html.render import MAX_COPY_BYTES, _CopyBudget, place_file

    small, big = tmp_path / "small.json", tmp_path / "trace.jsonl"
    small.write_text("{}")
    big.write_bytes(b"x" * (MAX_COPY_BYTES + 10))
    budget = _CopyBudget(MAX_COPY_BYTES + 1)
    assert place_file(small, tmp_path / "out" / "small.txt", budget)
    assert (tmp_path / "out" / "small.txt").stat().st_ino == small.stat().st_ino  # a hard link: no disk used
    assert place_file(big, tmp_path / "out" / "big.txt", budget) and budget.left == 1
    copy = (tmp_path / "out" / "big.txt").read_bytes()
    assert copy.startswith(b"x" * MAX_COPY_BYTES) and copy.endswith(b"[cut here: the whole file is in runs/]\n")
    assert not place_file(big, tmp_path / "out" / "big2.txt", budget)  # budget spent: nothing written
    assert not (tmp_path / "out" / "big2.txt").exists()
