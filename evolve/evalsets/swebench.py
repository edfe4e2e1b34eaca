"""``evolve evals import swe-bench SOURCE``: real SWE-bench rows as an evolve eval set.

SOURCE is a ``.jsonl``, ``.json`` or ``.parquet`` export, or a Hugging Face dataset name (downloaded
with ``datasets`` when the network allows). Row styles, told apart by their fields:

* ``swe-bench``: SWE-bench rows as the ``swebench`` 5 package reads them (``SWE-bench/SWE-bench``,
  ``_Lite``, ``_Verified``): each row names its ``image``, ``eval_script``, ``log_parser`` and
  ``eval_type``. The task's image is the row's; its test command is the eval script's environment lines
  and test command (between SWE-bench's test-output markers; the test patch is applied by evolve's
  grader); its outcomes are read with ``swebench``'s log parser and resolved by ``swebench``'s report
  functions (``evolve.evalsets.swebench_grading``).
* ``classic``: rows without those fields (``princeton-nlp/SWE-bench*`` exports before swebench 5,
  SWE-Gym): the image name is the one ``swebench`` derives for the instance
  (``ImageSpec.name``, with ``--namespace`` for a registry's copy, e.g. SWE-Gym's), and the test
  command must be given with ``--test-cmd`` (the FAIL_TO_PASS/PASS_TO_PASS files are appended); the log
  parser is ``--log-parser`` (default ``parse_log_pytest``).
* ``swe-smith``: rows with ``image_name`` (``evolve.evalsets.swesmith``): the bug patch is applied to the
  image's clean /testbed, the fix is its reverse, SWE-smith's Python test command, graded as SWE-bench.
* ``r2e-gym``: rows with ``docker_image`` (``evolve.evalsets.r2egym``): the image's ``run_tests.sh`` on
  its hidden ``/r2e_tests``, resolved when the outcomes equal ``expected_output_json`` (R2E-Gym's rule).

Rows are never changed silently: a row that cannot become a task is dropped with its reason, listed in
the result and in ``evalset.yaml``'s description. Splits: the ``round(n * holdout_fraction)`` tasks
(at least 1, at most n - 1) with the smallest ``sha256(f"{seed}:{instance_id}")`` go to ``holdout``, the
rest to ``search``; an import that would leave a split empty is an error.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from evolve.errors import EvalSetError
from evolve.evalsets.format import dump_tasks
from evolve.evalsets.swebench_grading import LOG_PARSERS_HINT, log_parser_names
from evolve.types import Task

__all__ = ["ImportOptions", "Imported", "import_swebench", "read_rows", "split_tasks", "test_command", "to_task"]

STYLES = ("auto", "swe-bench", "classic", "swe-smith", "r2e-gym")
_R2E_KEPT = ("problem_statement", "repo_name", "commit_hash", "created_at")
"""Fields of an R2E-Gym row kept in the task as they are (the large ones are read, not copied)."""


@dataclass(frozen=True)
class ImportOptions:
    """How rows become tasks."""

    holdout_fraction: float = 0.3
    """Share of tasks in ``holdout`` (0 < f < 1)."""
    seed: int = 0
    """Same seed, same split."""
    style: str = "auto"
    """``auto`` (by the fields of each row), ``swe-bench``, ``classic``, ``swe-smith`` or ``r2e-gym``."""
    test_cmd: str | None = None
    """Classic and SWE-smith rows: the test command run in /testbed (test files appended), e.g. with the
    conda env activated. SWE-smith rows default to SWE-smith's Python profile command."""
    log_parser: str = "parse_log_pytest"
    """Classic and SWE-smith rows: swebench's log parser (a key of ``PARSER_REGISTRY``)."""
    namespace: str | None = None
    """Classic rows: the registry namespace of the instance images (None: the locally built name)."""
    hf_split: str = "test"
    """The split of a Hugging Face dataset to read."""


@dataclass
class Imported:
    """What an import made."""

    path: Path
    counts: dict[str, int]
    dropped: dict[str, str] = field(default_factory=dict)
    """instance_id (or row number) to why it was dropped."""
    images: list[str] = field(default_factory=list)


def read_rows(source: str, hf_split: str = "test") -> list[dict]:
    """The rows of a ``.jsonl``/``.json``/``.parquet`` file, or of a Hugging Face dataset by name.

    Raises:
        EvalSetError: unreadable file, a row that is not an object, or a dataset that cannot be downloaded.
    """
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                rows = pq.read_table(path).to_pylist()
            except Exception as e:  # pyarrow raises several types for a bad file
                raise EvalSetError(f"cannot read parquet: {e}", path=str(path)) from None
        elif path.suffix == ".json":
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise EvalSetError(f"cannot read JSON: {e}", path=str(path)) from None
        else:
            rows = []
            for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as e:
                        raise EvalSetError(f"invalid JSON: {e}", path=str(path), line=n) from None
    elif path.suffix in (".jsonl", ".json", ".parquet") or "/" not in source or path.exists():
        raise EvalSetError("no such file (expected a .jsonl, .json or .parquet export, or a Hugging Face "
                           "dataset name such as SWE-bench/SWE-bench_Lite)", path=source)
    else:
        rows = _download(source, hf_split)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise EvalSetError("expected rows that are JSON objects (one task each)", path=source)
    return rows


def _download(name: str, split: str) -> list[dict]:
    try:
        from datasets import load_dataset
    except ImportError:
        raise EvalSetError(f"reading the Hugging Face dataset {name!r} needs the datasets package: "
                           + LOG_PARSERS_HINT) from None
    try:
        return [dict(r) for r in load_dataset(name, split=split)]
    except Exception as e:  # datasets/huggingface_hub raise many network and lookup errors
        raise EvalSetError(f"could not download the Hugging Face dataset {name!r} (split {split!r}): "
                           f"{type(e).__name__}: {str(e)[:300]}. Without network, export it where you have one "
                           "(e.g. to .parquet or .jsonl) and pass the file") from None


def test_command(env: list[str], tests: list[str]) -> str:
    """The grader's test command for an imported task: ``bash -c SCRIPT evolve-swebench`` where SCRIPT is
    ``scripts/swebench_tests.sh.j2`` with the environment lines ``env`` and the test lines ``tests``."""
    import jinja2

    template = resources.files("evolve.evalsets").joinpath("scripts/swebench_tests.sh.j2").read_text()
    script = jinja2.Template(template, undefined=jinja2.StrictUndefined, keep_trailing_newline=True).render(
        env="\n".join(env), tests="\n".join(tests))
    return f"bash -c {shlex.quote(script)} evolve-swebench"


def _eval_script_parts(script: str) -> tuple[list[str], list[str]] | str:
    """(environment lines, test lines) of a SWE-bench eval script, or why it has none.

    Environment: the lines before the test-output start marker, without git commands and without the
    heredoc that applies the test patch (evolve's grader applies ``test_patch`` itself). Tests: the lines
    between the start and end markers."""
    from swebench.harness.constants import END_TEST_OUTPUT, START_TEST_OUTPUT
    from swebench.harness.utils import parse_eval_script

    lines = parse_eval_script(script)
    start = next((i for i, line in enumerate(lines) if START_TEST_OUTPUT in line), None)
    end = next((i for i, line in enumerate(lines) if END_TEST_OUTPUT in line), None)
    if start is None or end is None or end <= start + 1:
        return "its eval_script has no test command between SWE-bench's test-output markers"
    env: list[str] = []
    heredoc: str | None = None
    for line in lines[:start]:
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if "<<" in line:
            heredoc = line.split("<<", 1)[1].strip().strip("'\"-")
            continue
        if line.strip().startswith("git "):
            continue
        env.append(line)
    return env, lines[start + 1:end]


def _style(row: dict, wanted: str) -> str:
    if wanted != "auto":
        return wanted
    if all(row.get(k) for k in ("image", "eval_script", "log_parser")):
        return "swe-bench"
    if "image_name" in row:
        return "swe-smith"
    if "docker_image" in row:
        return "r2e-gym"
    return "classic"


def _derived(fields: dict) -> dict:
    """Task fields from the parts a SWE-smith or R2E-Gym row gave (``env``/``tests`` become ``test_cmd``)."""
    env, tests = fields.pop("env"), fields.pop("tests")
    return {**fields, "test_cmd": test_command(env, tests), "repo_path": None}


def to_task(row: dict, opts: ImportOptions) -> Task | str:
    """The task for one row, or why the row is dropped.

    Raises:
        EvalSetError: a classic row while ``opts.test_cmd`` is unset (the message says how to set it).
    """
    style = _style(row, opts.style)
    fields = {k: v for k, v in row.items() if k not in ("image", "eval_script", "log_parser", "eval_type")}
    if style == "swe-smith":
        from evolve.evalsets.swesmith import swesmith_fields

        made = swesmith_fields(row, opts.test_cmd, opts.log_parser)
        if isinstance(made, str):
            return made
        fields = {k: v for k, v in fields.items() if k != "image_name"} | _derived(made)
    elif style == "r2e-gym":
        from evolve.evalsets.r2egym import r2egym_fields

        made = r2egym_fields(row)
        if isinstance(made, str):
            return made
        fields = {k: row[k] for k in _R2E_KEPT if k in row} | _derived(made)
    elif style == "swe-bench":
        missing = [k for k in ("image", "eval_script", "log_parser") if not row.get(k)]
        if missing:
            return f"a swe-bench row without {', '.join(missing)}"
        if row["log_parser"] not in log_parser_names():
            return f"swebench has no log parser {row['log_parser']!r} (a newer swebench may: pip install -U swebench)"
        parts = _eval_script_parts(row["eval_script"])
        if isinstance(parts, str):
            return parts
        env, tests = parts
        sw = {"style": style, "log_parser": row["log_parser"], "eval_type": row.get("eval_type") or "pass_and_fail",
              "version": str(row.get("version", ""))}
        fields.update(image=row["image"], test_cmd=test_command(env, tests), swebench=sw, repo_path=None)
    else:
        if not opts.test_cmd:
            raise EvalSetError(
                "these rows carry no eval_script/log_parser/image (a SWE-bench export before swebench 5, or "
                "SWE-Gym): give the test command run in /testbed of the instance image with --test-cmd (the "
                "FAIL_TO_PASS/PASS_TO_PASS files are appended), e.g. --test-cmd '. /opt/miniconda3/bin/activate "
                "&& conda activate testbed && python -m pytest -rA -p no:cacheprovider', and --namespace for "
                "a registry's image names (SWE-Gym: xingyaoww)")
        from swebench.image_builder.image_spec import ImageSpec

        image = ImageSpec(instance_id=str(row.get("instance_id") or "?"), dockerfile="-",
                          namespace=opts.namespace).name
        sw = {"style": style, "log_parser": opts.log_parser, "eval_type": "pass_and_fail",
              "version": str(row.get("version", ""))}
        fields.update(image=image, test_cmd=test_command([], [f'{opts.test_cmd} "$@"']), swebench=sw,
                      repo_path=None)
    try:
        return Task.model_validate(fields)
    except ValidationError as e:
        return "not a task: " + "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())


def split_tasks(tasks: list[Task], holdout_fraction: float, seed: int) -> dict[str, list[Task]]:
    """``{"search": [...], "holdout": [...]}``, see the module docstring; file order kept within a split.

    Raises:
        EvalSetError: fewer than 2 tasks (a split would be empty), or a fraction outside (0, 1).
    """
    if not 0 < holdout_fraction < 1:
        raise EvalSetError(f"--holdout-fraction must be between 0 and 1, got {holdout_fraction}")
    n = len(tasks)
    if n < 2:
        raise EvalSetError(f"{n} task(s) to split: search and holdout each need at least one task, so an "
                           "eval set needs at least 2 (a split with no task would evaluate 0/0)")
    k = min(n - 1, max(1, round(n * holdout_fraction)))
    order = sorted(tasks, key=lambda t: hashlib.sha256(f"{seed}:{t.instance_id}".encode()).hexdigest())
    held = {t.instance_id for t in order[:k]}
    return {"search": [t for t in tasks if t.instance_id not in held],
            "holdout": [t for t in tasks if t.instance_id in held]}


def import_swebench(source: str, dest: Path, opts: ImportOptions, *, name: str | None = None) -> Imported:
    """Read ``source``, turn rows into tasks, split them and write the eval set directory ``dest``
    (``search.jsonl``, ``holdout.jsonl``, ``evalset.yaml``; files written atomically).

    Raises:
        EvalSetError: unreadable source, unknown style or log parser, duplicate instance_id, no row
            usable, a split that would be empty, or ``dest`` holding something other than an eval set.
    """
    if opts.style not in STYLES:
        raise EvalSetError(f"--style must be one of {', '.join(STYLES)}, got {opts.style!r}")
    if opts.log_parser not in log_parser_names():
        raise EvalSetError(f"--log-parser {opts.log_parser!r} is not one of swebench's log parsers: "
                           + ", ".join(n for n in log_parser_names() if "pytest" in n or "django" in n) + ", ...")
    rows = read_rows(source, opts.hf_split)
    tasks: list[Task] = []
    dropped: dict[str, str] = {}
    seen: set[str] = set()
    for n, row in enumerate(rows, start=1):
        result = to_task(row, opts)
        key = str(row.get("instance_id") or f"row {n}")
        if isinstance(result, str):
            dropped[key] = result
            continue
        if result.instance_id in seen:
            raise EvalSetError(f"duplicate instance_id {result.instance_id!r} (row {n})", path=source)
        seen.add(result.instance_id)
        tasks.append(result)
    if not tasks:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(dropped.items())[:5])
        raise EvalSetError(f"no row of {len(rows)} became a task" + (f" ({reasons})" if reasons else ""),
                           path=source)
    splits = split_tasks(tasks, opts.holdout_fraction, opts.seed)
    dest = Path(dest)
    ours = {"search.jsonl", "holdout.jsonl", "evalset.yaml"}
    if dest.exists() and (not dest.is_dir() or any(p.name not in ours for p in dest.iterdir())):
        raise EvalSetError("exists and holds other files than an imported eval set's (search.jsonl, "
                           "holdout.jsonl, evalset.yaml); choose another --out or remove it", path=str(dest))
    dest.mkdir(parents=True, exist_ok=True)
    for split, split_tasks_ in splits.items():
        dump_tasks(split_tasks_, dest / f"{split}.jsonl")
    description = (f"imported from {source}: {len(tasks)} tasks of {len(rows)} rows, holdout fraction "
                   f"{opts.holdout_fraction}, seed {opts.seed}")
    if dropped:
        description += f"; {len(dropped)} rows dropped: " + "; ".join(f"{k}: {v}" for k, v in dropped.items())
    spec = {"name": name or dest.name, "description": description}
    tmp = dest / ".evalset.yaml.tmp"
    tmp.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(dest / "evalset.yaml")
    images = sorted({t.image for t in tasks if t.image})
    return Imported(path=dest, counts={s: len(ts) for s, ts in splits.items()}, dropped=dropped, images=images)
