"""One family of expected errors.

Every ``EvolveError`` carries a message that says what went wrong and what to
do about it. The CLI prints the message and exits with status 1, without a
traceback. Any other exception is a bug and keeps its traceback.

What each error stops (each class says who catches it and what the user does):

* **the command** (the CLI prints it, exit 1): ``ConfigError``, ``EvalSetError``,
  ``HarnessError`` (outside a generation), ``SandboxError``, ``ModelError`` and
  its ``ServeError``, ``StopRun``, ``SynthError`` and its subclasses, ``OutputError``, ``RunFileError``.
* **one generation** of ``evolve run`` (recorded as failed; the run goes on):
  ``PlanError``, ``HarnessError``, ``ContextWindowError`` and ``RequestError``
  from an optimizer call, ``InfraError``.
* **one task** (retried, then labelled ``infra`` and never scored): ``InfraError``,
  and ``UpstreamError`` on a solver call.
* **one model call** of the harness (answered as an HTTP error it can handle):
  ``ContextWindowError`` (400), ``RequestError`` (400), ``UpstreamError`` (502).
* **nothing**, caught and answered inside one step: ``EditFormatError`` (the
  optimizer gets the message and tries again).

Every class lives here, so ``except`` clauses anywhere name one of these. The
modules that raise them re-export them under their old names.
"""

from __future__ import annotations


class EvolveError(Exception):
    """An expected failure with a message that tells the user what to do.

    Caught by the CLI, which prints the message and exits 1.
    """


# -- stop the command ---------------------------------------------------------------------------

class ConfigError(EvolveError):
    """A bad command-line option or configuration value.

    Raised before anything is spent; the message names the option or ``evolve.yaml``
    key (dotted: ``models.solver.input_cost_per_token``). The user fixes that setting.
    """


class EvalSetError(EvolveError):
    """An eval set that cannot be found or parsed.

    The message names the file, the 1-based line and the field at fault; the
    user fixes that line, or names an eval set ``evolve evals list`` shows.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f", line {line}"
            if field is not None:
                where += f", field {field!r}"
            where += ": "
        super().__init__(where + message)
        self.path, self.line, self.field = path, line, field


class HarnessError(EvolveError):
    """A harness reference or ``harness.yaml`` that cannot be used.

    From ``evolve eval`` it stops the command: the user fixes the ``--harness``
    reference or ``harness.yaml``. Inside ``evolve run`` a candidate whose
    harness broke fails its generation only (``evolve.loop``), and the run goes on.
    """


class SandboxError(EvolveError):
    """Docker is unreachable or a sandbox image cannot be had.

    Stops the command. The user starts Docker (or fixes its permissions), or
    builds the image with ``evolve sandbox build``.
    """


class ModelError(EvolveError):
    """A model that cannot be called at all: bad credentials, no permission or credit, unknown model.

    Retrying cannot help. The gateway answers the harness 502 ``model_error`` and
    records it (``Gateway.fatal_error``); the evaluation (``evolve.evaluate``) and the
    run (``evolve.loop``) stop. The message names the environment variable or
    setting the user fixes.
    """


class ServeError(ModelError):
    """A local model server (``evolve.serve``) that did not come up: it exited, or was not ready in time.

    Stops the command. The message holds the tail of the server's log, its
    command and the usual fix (reinstall llama-cpp-python, raise
    ``serve.ready_timeout_s``, check ``serve.args``).
    """


class StopRun(EvolveError):
    """The whole ``evolve run`` must stop from inside a generation (the optimizer model is unreachable).

    Raised by ``evolve.loop`` when an optimizer call still fails after retries;
    the run is saved as ``failed`` and the CLI prints why. The user restores the
    model's service (or network) and resumes the run.
    """


class SynthError(EvolveError):
    """``evolve evals synth`` / ``build`` cannot make an eval set from its input.

    Stops the command; nothing is written. The message names the repository,
    source or option to fix (``--repo``, ``--from``).
    """


class NoTestsError(SynthError):
    """The project has no pytest tests to run: the user points ``--repo`` at a project with a
    pytest suite, or sets its test command."""


class SuiteFailsError(SynthError):
    """The project's test suite fails, times out or cannot be collected before any mutation:
    the user installs its dependencies in the image, or raises the suite timeout."""


class RecipeError(SynthError):
    """An ``evolve evals build`` recipe that cannot be found or read: the message lists where it
    looked, or the field at fault."""


class DownloadError(SynthError):
    """A recipe's source distribution that pip cannot download, or whose sha256 differs from the
    recipe's: the user checks the network (or proxy) and the recipe's pin."""


class RunFileError(EvolveError):
    """A run file cannot be read or written (``evolve.runstate``), or a JSON-lines log has a damaged
    line (``evolve.store.read_jsonl``); the message names the file (and line) and how to recover."""


class OutputError(EvolveError):
    """The destination of ``evolve evals synth`` / ``build`` exists and was not made by evolve.

    Stops the command before anything is overwritten; the user picks another
    destination or removes that directory.
    """


# -- fail one generation ------------------------------------------------------------------------

class PlanError(EvolveError):
    """The optimizer gave no usable plan (no JSON object with a hypothesis), even after a retry.

    ``evolve.loop`` records the generation as failed and goes on. If every
    generation fails this way, the user picks a more capable optimizer model
    (``models.optimizer.model``).
    """


# -- fail one task --------------------------------------------------------------------------------

class InfraError(EvolveError):
    """An infrastructure failure while evaluating one task.

    Docker errors, a grader timeout, or a gateway that could not reach the
    model. ``evolve.evaluate`` retries the phase (``evolve.retry``) and, if it
    keeps failing, labels the task ``infra``: it is never scored as the agent's
    failure. In ``evolve run`` a generation whose step failed this way is
    recorded as failed, not as the candidate's fault. The user looks at
    ``runs/<id>/infra/`` and ``events.jsonl`` if it happens often.

    Attributes:
        kind: short label, e.g. ``"docker"``, ``"grader_timeout"``, ``"gateway"``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


# -- fail one model call (``evolve.models``) --------------------------------------------------------

class ContextWindowError(EvolveError):
    """The request exceeds the model's context window.

    The gateway answers the harness HTTP 400 ``context_window_exceeded``, which
    it can handle (e.g. by trimming its history). For the optimizer,
    ``Optimizer.ask_fitting`` rebuilds the prompt smaller; if it never fits, the
    generation fails. The user picks a model with a larger context, or gives a
    local server a larger one (``serve.args: ["--n_ctx", "16384"]``).
    """


class RequestError(EvolveError):
    """The request itself is invalid: it asked to stream, lacks messages, or the provider rejected it (400/422).

    The gateway answers the harness HTTP 400 ``invalid_request``: the harness's
    fault, scored as such. From an optimizer call it fails the generation; if
    it repeats, the user checks ``models.optimizer.params``.
    """


class UpstreamError(EvolveError):
    """A transient upstream failure (429, timeout, 5xx, connection) that persisted after retries.

    The gateway answers the harness 502 ``upstream_error`` and the task is
    labelled ``infra``, never scored against the harness. From an optimizer call
    it stops the run (``StopRun``). The user checks the provider's status, rate
    limits and network, or the local server, then resumes.
    """


# -- caught inside one step -------------------------------------------------------------------------

class EditFormatError(EvolveError):
    """A reply whose edits cannot be read, e.g. a block without ``=======``.

    The message names the block (1-based, in reply order), its file when
    known, and the marker that is missing. Nothing of such a reply is applied.
    Caught by ``evolve.patch``, which sends the message back to the optimizer to
    re-send its edits; the user sees it only in the generation's record.

    Attributes:
        block: 1-based number of the malformed block, or None.
    """

    def __init__(self, message: str, *, block: int | None = None) -> None:
        super().__init__(message)
        self.block = block


__all__ = ["ConfigError", "ContextWindowError", "DownloadError", "EditFormatError", "EvalSetError", "EvolveError",
           "HarnessError", "InfraError", "ModelError", "NoTestsError", "OutputError", "PlanError", "RecipeError",
           "RequestError", "SandboxError", "ServeError", "StopRun", "SuiteFailsError", "SynthError",
           "UpstreamError"]
