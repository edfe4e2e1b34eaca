"""The harness's lineage in git: candidate branches, the accepted head, diffs, rollback.

Refs of a run ``<run>``:

    evolve/<run>/base    the commit the run started from (never moves)
    evolve/<run>/best    the accepted head: moves on accept and on rollback
    evolve/<run>/gNNN    generation NNN's candidate: its change, then a verdict commit
    evolve/<run>/gNNN-cJ candidate J of a generation that made K > 1 (``search.candidates``); the
                         generation's own candidate (the winner, or the largest gain) moves to
                         gNNN before its verdict commit, the others stay here (stepping stones)

Candidates are edited in their own worktree (under ``runs/<run>/worktrees``), so
the user's checked-out branch, index and work tree are never touched. Every
verdict is a commit of its own carrying the hypothesis and the scores as git
trailers; accepting moves ``best`` to it. Refs are moved with a compare-and-swap
(``git update-ref NEW OLD``), so a stale writer cannot clobber a newer head.
A ``Lineage`` may be used from several threads (K candidates patched at once): its git writes
(worktrees, commits, refs) hold one lock, since ``git worktree add`` and ``prune`` race otherwise.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from evolve.errors import ConfigError, EvolveError
from evolve.hostgit import HostGitError, Repo


def open_repo(path: Path) -> Repo:
    """The git repository containing ``path``, driven through ``evolve.hostgit`` (the user's git config,
    hooks and signing never apply; the repository's own config does).

    Raises:
        ConfigError: ``path`` is not inside a git repository.
    """
    repo = Repo.find(path)
    if repo is None:
        raise ConfigError(f"{path} is not inside a git repository. Run `evolve init` there first.")
    return repo


@dataclass(frozen=True)
class Refs:
    run_id: str

    @property
    def base(self) -> str:
        return f"refs/heads/evolve/{self.run_id}/base"

    @property
    def best(self) -> str:
        return f"refs/heads/evolve/{self.run_id}/best"

    def gen(self, n: int, cand: int | None = None) -> str:
        """Generation ``n``'s branch, or with ``cand`` its candidate ``cand``'s (``gNNN-cJ``)."""
        return f"refs/heads/evolve/{self.run_id}/{label(n, cand)}"

    @staticmethod
    def short(ref: str) -> str:
        return ref.removeprefix("refs/heads/")


class Lineage:
    """Git operations of one run on the user's repository (through ``evolve.hostgit``: evolve's commits
    carry its own identity, and no hook, signing or other user git config can fail or slow a night)."""

    def __init__(self, repo_root: Path, run_id: str, worktrees: Path) -> None:
        self.repo = open_repo(repo_root)
        self.root = self.repo.root
        self.refs = Refs(run_id)
        self.worktrees = worktrees
        self._lock = threading.RLock()

    # -- refs ---------------------------------------------------------------------

    def sha(self, ref: str) -> str | None:
        """The commit a ref points at, or None if it doesn't exist."""
        return self.repo.sha(ref)

    def start(self, commit: str = "HEAD") -> str:
        """Create the run's base and best refs at ``commit`` (idempotent). Returns the base sha."""
        sha = self.repo.sha(commit)
        if sha is None:
            raise ConfigError(f"{commit} is not a commit in {self.root}: commit the harness first")
        for ref in (self.refs.base, self.refs.best):
            if self.sha(ref) is None:
                self.repo.update_ref(ref, sha, "")
        return self.sha(self.refs.base)

    def move_best(self, new: str, expected_old: str) -> None:
        """Point ``best`` at ``new`` if it is still at ``expected_old``.

        Raises:
            EvolveError: ``best`` moved meanwhile (another writer).
        """
        try:
            self.repo.update_ref(self.refs.best, new, expected_old)
        except HostGitError as e:
            raise EvolveError(f"{Refs.short(self.refs.best)} moved meanwhile; not overwriting it "
                              f"({e.output.strip()})") from None

    # -- candidates ---------------------------------------------------------------

    def worktree(self, gen: int, parent: str | None = None, cand: int | None = None) -> Path:
        """Check out a fresh worktree for generation ``gen`` (or its candidate ``cand``), branched from
        the commit ``parent`` (default: ``best``; a stepping stone's commit under ``search.parent: dgm``).

        An existing branch (a resumed generation) is reset to that commit.
        """
        path = self.worktrees / label(gen, cand)
        with self._lock:
            self.drop_worktree(gen, cand)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.repo.add_worktree(path, parent or self.sha(self.refs.best),
                                   branch=Refs.short(self.refs.gen(gen, cand)))
        return path

    def drop_worktree(self, gen: int, cand: int | None = None) -> None:
        with self._lock:
            self.repo.remove_worktree(self.worktrees / label(gen, cand))

    def drop_worktrees(self, gen: int) -> None:
        """Remove generation ``gen``'s worktree and those of its candidates (``gNNN-cJ``)."""
        self.drop_worktree(gen)
        for path in sorted(self.worktrees.glob(f"{label(gen)}-c*")):
            if path.name.removeprefix(f"{label(gen)}-c").isdigit():
                self.drop_worktree(gen, int(path.name.removeprefix(f"{label(gen)}-c")))

    def commit_candidate(self, gen: int, path: Path, subject: str, trailers: dict[str, str]) -> str | None:
        """Commit every change in the worktree at ``path``; None if nothing changed."""
        with self._lock:
            return Repo(path).commit_all(message(subject, trailers))

    def point_gen(self, gen: int, commit: str) -> None:
        """Point generation ``gen``'s branch at ``commit`` (its chosen candidate of K), creating or
        moving it; a verdict commit then goes on top (``commit_verdict``)."""
        with self._lock:
            self.repo.update_ref(self.refs.gen(gen), commit)

    def commit_verdict(self, gen: int, subject: str, trailers: dict[str, str]) -> str:
        """An empty commit on the generation's branch recording its verdict; returns its sha."""
        branch = self.refs.gen(gen)
        parent = self.sha(branch)
        tree = self.repo.sha(parent, "tree")
        sha = self.repo.git("commit-tree", tree, "-p", parent, "-F", "-", input=message(subject, trailers).encode())
        self.repo.update_ref(branch, sha, parent)
        return sha

    def delete_branch(self, gen: int, cand: int | None = None) -> None:
        """Delete generation ``gen``'s branch (or its candidate ``cand``'s) if it exists (idempotent)."""
        with self._lock:
            if self.sha(self.refs.gen(gen, cand)):
                self.repo.delete_ref(self.refs.gen(gen, cand))

    def verdict_of(self, gen: int) -> tuple[str, dict[str, str]] | None:
        """(sha, trailers) of generation ``gen``'s verdict commit when it is the tip of the
        generation's branch, else None (no verdict committed yet, or the branch was deleted)."""
        tip = self.sha(self.refs.gen(gen))
        if tip is None:
            return None
        trailers = self.trailers(tip)
        if trailers.get("Evolve-Verdict") and trailers.get("Evolve-Generation") == str(gen) \
                and trailers.get("Evolve-Run") == self.refs.run_id:
            return tip, trailers
        return None

    # -- reading ------------------------------------------------------------------

    def diff(self, old: str, new: str, paths: list[str] | None = None, *, stat: bool = False) -> str:
        args = ["--stat"] if stat else ["--no-color", "--no-ext-diff"]
        return self.repo.git("diff", *args, old, new, "--", *(paths or []))

    def trailers(self, sha: str) -> dict[str, str]:
        """The ``Evolve-*`` trailers of commit ``sha``."""
        return {k: v for k, v in self.repo.trailers(sha).items() if k.startswith("Evolve-")}

    def tree_files(self, ref: str, subdir: str) -> dict[str, str]:
        """``{path relative to subdir: text}`` of the tree at ``ref`` (binary files skipped)."""
        out = {}
        listing = self.repo.git("ls-tree", "-r", "--name-only", "-z", ref, "--", subdir)
        for name in listing.split("\0"):
            if not name:
                continue
            try:
                content = self.repo.run("cat-file", "blob", f"{ref}:{name}")
                out[name[len(subdir):].lstrip("/")] = content.decode("utf-8")
            except (HostGitError, UnicodeDecodeError):
                continue
        return out


def label(gen: int, cand: int | None = None) -> str:
    """``gNNN``, or ``gNNN-cJ`` for candidate J of a generation that made several."""
    return f"g{gen:03d}" + (f"-c{cand}" if cand is not None else "")


def candidate_trailers(run_id: str, gen: int, parent: str, files: list[str]) -> dict[str, str]:
    """The git trailers of generation ``gen``'s candidate commit."""
    return {"Evolve-Run": run_id, "Evolve-Generation": str(gen), "Evolve-Parent": parent,
            "Evolve-Files": ", ".join(files)}


def verdict_trailers(run_id: str, rec) -> dict[str, str]:
    """The git trailers of a verdict commit, from the decided ``GenerationRecord`` ``rec``
    (``pending`` holds the verdict; rates are resolve rates in [0, 1], written with 4 decimals).

    Git holds the truth of a run: a resumed run rebuilds what its records miss from these.
    """
    return {"Evolve-Run": run_id, "Evolve-Generation": str(rec.gen), "Evolve-Verdict": rec.pending or rec.status,
            "Evolve-Hypothesis": rec.hypothesis, "Evolve-Parent": rec.parent,
            "Evolve-Parent-Score": f"{rec.parent_rate:.4f}", "Evolve-Child-Score": f"{rec.child_rate:.4f}",
            "Evolve-Delta": f"{rec.delta:+.4f}", "Evolve-CI": f"[{rec.ci_low:+.4f}, {rec.ci_high:+.4f}]",
            "Evolve-P-Value": f"{rec.p_value:.4g}", "Evolve-Tasks": str(rec.n_tasks),
            "Evolve-Fixed": ", ".join(rec.fixed) or "-", "Evolve-Broken": ", ".join(rec.broken) or "-",
            **candidates_trailers(rec)}


def candidates_trailers(rec) -> dict[str, str]:
    """With K > 1 candidates (``rec.candidates``), the verdict commit's record of every one of them, so a
    record rebuilt from git keeps its candidate list (``evolve.recorder.record_from_git``)::

        Evolve-Candidate: 1                  the generation's own candidate (the one on gNNN)
        Evolve-Winner: 1                     the race's winner, or -
        Evolve-C2: rejected stone rate=0.0000 delta=+0.0000 p=1 commit=<sha>
        Evolve-C2-Aim: format errors         the failure category its plan aimed at
        Evolve-C2-Hypothesis: ...
        Evolve-C2-Files: prompts/system.txt  its plan's files

    ``Evolve-CJ`` is ``STATUS [stone] [rate=R] [delta=D] [p=P] [commit=SHA]``, a field left out when
    the candidate has none (a refused one has no commit). Nothing for K = 1."""
    if not rec.candidates:
        return {}
    out = {"Evolve-Candidate": str(rec.cand), "Evolve-Winner": str(rec.winner) if rec.winner else "-"}
    for c in rec.candidates:
        words = [c.status] + (["stone"] if c.stone else [])
        words += [f"{k}={fmt.format(v)}" for k, fmt, v in (("rate", "{:.4f}", c.child_rate),
                                                           ("delta", "{:+.4f}", c.delta),
                                                           ("p", "{:.4g}", c.p_value), ("commit", "{}", c.candidate))
                  if v is not None]
        out |= {f"Evolve-C{c.cand}": " ".join(words), f"Evolve-C{c.cand}-Aim": c.category or "-",
                f"Evolve-C{c.cand}-Hypothesis": c.hypothesis or "-", f"Evolve-C{c.cand}-Files": ", ".join(c.files) or "-"}
    return out


def message(subject: str, trailers: dict[str, str]) -> str:
    """A commit message: one-line subject (at most 200 characters), blank line, ``Key: value`` trailers."""
    body = "\n".join(f"{k}: {' '.join(str(v).split())}" for k, v in trailers.items())
    return f"{' '.join(subject.split())[:200]}\n\n{body}\n"
