"""How a job ends: the exit codes every entrypoint uses and the manifests rely on.

| code | meaning | what Kubernetes should do |
|---|---|---|
| 0  | done (or skipped: the stage's marker was already there, or the recipe has no such stage) | nothing |
| 1  | a clear runtime error (an unreachable bucket after retries, missing input on the bus, a model that went non-finite) or a bug (then with its traceback) | fail the Job: retrying burns TPU hours |
| 2  | a configuration or usage error (bad recipe, no weights, wrong tier for the node, a changed config on an old run id) | fail the Job, never retry |
| 75 | preempted: SIGTERM arrived, a checkpoint was saved; run the same command again to continue | restart the pod, not counted as a failure |

75 is EX_TEMPFAIL from sysexits.h ("try again later"). A preempted job must
not exit 0: since Kubernetes 1.27 a deleted pod whose containers exit 0 is
Succeeded, and the Job would count an unfinished stage done.

Errors a user can cause end the job with one line on stderr (`error: …` or
`config error: …`); anything else keeps Python's traceback and exits 1.
This module imports nothing, so every package may raise its errors.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 75


class UsageError(ValueError):
    """The recipe, tier or command asks for something that cannot run (exit 2, never retried)."""


class RunError(RuntimeError):
    """A runtime failure with a clear cause the user can act on (exit 1, one line)."""
