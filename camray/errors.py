"""camray's own exception types: what the command line maps to exit statuses.

Exit 2 is for what the user must fix before anything can run: `SetupError` and its kinds (`ConfigError`,
`UsageError`). Exit 3 is `LeaseHeld`. Everything else that ends a run, a pyarrow error included, is exit 1
with its own message: a built-in `ValueError` says nothing about whose fault it is.

The setup errors are also `ValueError`s (an unknown run also a `LookupError`), so code that caught those before
these types existed still does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from camray.io.lease import LeaseRecord


class CamrayError(Exception):
    """Base of camray's own errors."""


class SetupError(CamrayError, ValueError):
    """The job cannot start as asked (model, layers, CAM method, S3 endpoint): nothing was done, and the message
    names the field to change."""


class ConfigError(SetupError):
    """A job configuration that cannot run; the message names the field."""


class UsageError(SetupError):
    """A user tool (`camray runs | report | query | export`) was asked something it cannot answer as asked: an
    argument out of range, missing or contradictory, or SQL that does not parse or bind."""


class RunNotFound(UsageError, LookupError):
    """The run id a tool was given is not in the output's `runs/` table."""


class InputNotFound(SetupError, FileNotFoundError):
    """The job's input (`source.uri`) is not there: no such bucket, folder, file or prefix. Found before the run
    takes the output's lease, so nothing was done and no `runs` row written; the message names what is missing."""


class LeaseHeld(CamrayError, RuntimeError):
    """The output is leased by another run; the message names the holder and when the lease expires."""

    def __init__(self, uri: str, holder: LeaseRecord) -> None:
        self.holder = holder
        super().__init__(
            f"output {uri} is leased by run {holder.run_id} on {holder.host} (pid {holder.pid}) until "
            f"{holder.expires_at} UTC; retry after that, or pass --wait-for-lease SECONDS to wait for it"
        )
