"""Reading a run in the morning: status, diff and rollback.

No litellm and no docker here: these commands must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evolve import owner
from evolve.errors import ConfigError, EvolveError
from evolve.hostgit import HostGitError
from evolve.lineage import Lineage, message
from evolve.runstate import GenerationRecord, RunLock, RunState, RunStore, latest_run


@dataclass
class RunReview:
    """One run as read from its files (for ``evolve status``, ``diff`` and ``rollback``).

    Attributes:
        root: the project the command runs in (``evolve.project.find_project``): git refs are read and
            moved there, never in ``state.repo`` (where the run was made: a label only, since a copied
            project must not move the original repo's refs). None for views that need no git.
    """

    state: RunState
    gens: list[GenerationRecord]
    store: RunStore
    root: Path | None = None


def open_run(runs_dir: Path, run_id: str | None, *, root: Path | None = None) -> RunReview:
    """The run ``run_id`` (default: the latest) with its generations; ``root`` is the project's
    repo, needed by ``diff``, ``plain_diff`` and ``rollback``.

    Raises:
        ConfigError: no such run.
    """
    rid = run_id or latest_run(runs_dir)
    store = RunStore(runs_dir, rid)
    return RunReview(store.load(), store.gens(), store, root)


def _lineage(view: RunReview) -> Lineage:
    if view.root is None:
        raise ConfigError("this command needs the project's repo: run it inside the project")
    return Lineage(view.root, view.state.run_id, view.store.dir / "worktrees")


def _gen(view: RunReview, n: int) -> GenerationRecord:
    for g in view.gens:
        if g.gen == n:
            return g
    known = ", ".join(str(g.gen) for g in view.gens) or "none"
    raise ConfigError(f"run {view.state.run_id} has no generation {n} (generations: {known})")


@dataclass
class DiffPart:
    title: str
    hypothesis: str
    fixed: list[str]
    broken: list[str]
    diff: str


def diff(view: RunReview, gen: int | None = None, *, stat: bool = False) -> list[DiffPart]:
    """The accepted changes since the base (one part per accepted generation on the
    current head, then the net diffstat), or one generation's change."""
    lin = _lineage(view)
    hd = view.state.harness_dir
    if gen is not None:
        g = _gen(view, gen)
        if not g.candidate:
            return [DiffPart(f"generation {gen}: {g.status} (no candidate commit)", g.hypothesis, [], [], "")]
        return [DiffPart(f"generation {gen}: {g.status}", g.hypothesis, sorted(g.fixed), sorted(g.broken),
                         lin.diff(g.parent, g.candidate, [hd], stat=stat))]
    best = lin.sha(lin.refs.best) or view.state.best
    parts = []
    for g in view.gens:
        # its candidate, not its verdict commit: a person's approval of a candidate that a later one was
        # explored from (approval_explore: pending) is not in the head's history, the change is
        if g.status == "accepted" and g.candidate and _is_ancestor(lin, g.candidate, best):
            parts.append(DiffPart(f"generation {g.gen}: accepted ({_pts(g.delta)})", g.hypothesis, sorted(g.fixed),
                                  sorted(g.broken), lin.diff(g.parent, g.candidate, [hd], stat=stat)))
    net = lin.diff(view.state.base, best, [hd], stat=True)
    parts.append(DiffPart(f"net change since the base: {view.state.base[:10]}..{best[:10]}", "", [], [],
                          net or "(none)"))
    return parts


def plain_diff(view: RunReview, gen: int | None = None) -> str:
    """A patch that ``git apply`` takes: the accepted changes since the base, or one generation's."""
    lin = _lineage(view)
    if gen is not None:
        g = _gen(view, gen)
        if not g.candidate:
            raise ConfigError(f"generation {gen} has no candidate commit ({g.status}: {g.reason})")
        old, new = g.parent, g.candidate
    else:
        old, new = view.state.base, lin.sha(lin.refs.best) or view.state.best
    return lin.repo.run("diff", "--no-color", "--no-ext-diff", "--no-textconv", "--binary", old, new, "--",
                        view.state.harness_dir).decode("utf-8", "replace")


def rollback(runs_dir: Path, run_id: str | None, *, root: Path, to: int | None = None, revert: int | None = None,
             undo: bool = False) -> tuple[str, str]:
    """Move the run's accepted head in the repo at ``root``; returns (old sha, new sha). History is kept and
    the move is recorded as an event, so ``undo`` can reverse it.

    - ``to=N``: the head becomes generation N's accepted state (0 = the base).
    - ``revert=N``: a new commit on the head that reverses generation N's change.
    - ``undo``: reverse the latest rollback.

    Raises:
        ConfigError: bad arguments, or the generation was never accepted.
        EvolveError: a run is active on the repo (lock held), or the revert does not apply.
    """
    if sum(x is not None and x is not False for x in (to, revert, undo or None)) != 1:
        raise ConfigError("give exactly one of --to GEN, --gen N or --undo")
    with RunLock(runs_dir):
        view = open_run(runs_dir, run_id, root=root)
        lin = _lineage(view)
        old = lin.sha(lin.refs.best) or view.state.best
        rate = view.state.best_rate
        if to is not None:
            if to == 0:
                new, rate = view.state.base, view.state.baseline_rate
            else:
                g = _gen(view, to)
                if g.status != "accepted" or not g.verdict_commit:
                    raise ConfigError(f"generation {to} was {g.status}, not accepted: nothing to roll back to. "
                                      "Use `evolve status` to see accepted generations.")
                new, rate = g.verdict_commit, g.child_rate
            what = f"to generation {to}"
        elif revert is not None:
            new = _revert(lin, view, _gen(view, revert), old)
            rate, what = None, f"revert generation {revert}"
        else:
            rollbacks = [e for e in view.store.events() if e["event"] == "rollback"]
            if not rollbacks:
                raise ConfigError("there is no rollback to undo")
            new, what, rate = rollbacks[-1]["from"], "undo of the last rollback", rollbacks[-1].get("from_rate")
        if new != old:
            lin.move_best(new, old)
        view.store.event("rollback", **{"from": old, "to": new, "what": what, "from_rate": view.state.best_rate})
        view.state.best, view.state.best_rate = new, rate
        view.store.save(view.state)
        return old, new


def _revert(lin: Lineage, view: RunReview, g: GenerationRecord, head: str) -> str:
    if g.status != "accepted" or not g.candidate:
        raise ConfigError(f"generation {g.gen} was {g.status}: it changed nothing on the accepted head")
    patch = lin.repo.run("diff", "--no-ext-diff", "--no-textconv", "--binary", g.parent, g.candidate, "--",
                         view.state.harness_dir)
    with owner.temp_dir("revert") as tmp:
        wt = Path(tmp) / "wt"
        wrepo = lin.repo.add_worktree(wt, head)
        try:
            try:
                wrepo.run("apply", "-R", "--3way", "-", input=patch)
            except HostGitError as e:
                raise EvolveError(f"generation {g.gen}'s change no longer reverses cleanly on the head: "
                                  f"{e.output.strip()[:400]}. Use `evolve rollback --to N` instead.") from None
            sha = wrepo.commit_all(message(f"evolve: revert generation {g.gen}: {g.hypothesis}",
                                           {"Evolve-Run": view.state.run_id, "Evolve-Revert": str(g.gen)}))
            if sha is None:
                raise ConfigError(f"generation {g.gen}'s change is no longer on the head: nothing to revert")
            return sha
        finally:
            lin.repo.remove_worktree(wt)


def _is_ancestor(lin: Lineage, a: str, b: str) -> bool:
    try:
        return lin.repo.is_ancestor(a, b)
    except HostGitError:
        return False


def _pts(delta: float | None) -> str:
    return "-" if delta is None else f"{100 * delta:+.1f} pts"
