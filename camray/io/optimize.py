"""`camray optimize`: a Delta output's upkeep, safe beside a night's run.

Nightly runs each add their own files: a night of a few hundred images is one small file, so a year of nights is
hundreds of files in `results` (and as many commits in each log), and every reader opens each. `optimize`:
1. takes the output's lease, waiting for a run that holds it (`wait_for_lease`): it never works beside a run;
2. compacts each table's small files into files of about `target_bytes` (delta-rs's `optimize.compact`: one
   commit that adds the compacted files and removes the small ones; the rows and what every reader sees are
   unchanged), written with row groups of `ROW_GROUP_ROWS` rows, so that readers can read them a bounded batch at
   a time;
3. checkpoints each log, so that loading the table reads one checkpoint and the entries after it, and drops log
   entries past the log's retention (Delta's default, 30 days: the oldest version time travel reaches);
4. vacuums the files no current version names and older than `retention_hours`: those a compaction or a run's
   commit removed (until then they serve time travel), and those no commit ever named (a run's staged files that
   no later run resumed; an old Parquet output's files a migration left out).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from camray.errors import UsageError
from camray.io.delta_format import DeltaFormat
from camray.io.layout import TABLES
from camray.io.output import Output

logger = logging.getLogger(__name__)

TARGET_BYTES = 128 << 20
# Rows of a compacted file's row groups: a results row is about 20 KB with its maps, a row group then some 80 MB.
ROW_GROUP_ROWS = 4096
# Delta's own default retention of removed files.
RETENTION_HOURS = 168.0


@dataclass
class Upkeep:
    """What `optimize` did, table by table."""

    uri: str
    files_before: dict[str, int] = field(default_factory=dict)
    files_after: dict[str, int] = field(default_factory=dict)
    vacuumed: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:  # one line for the command line
        tables = "; ".join(
            f"{table}: {self.files_before[table]} -> {self.files_after[table]} files, {self.vacuumed[table]} vacuumed"
            for table in self.files_before
        )
        return f"optimized {self.uri}: {tables}"


def optimize(
    output: Output,
    target_bytes: int = TARGET_BYTES,
    retention_hours: float = RETENTION_HOURS,
    wait_for_lease: float = 3600.0,
) -> Upkeep:
    """Compacts, checkpoints and vacuums the output's tables under its lease (the module's docstring)."""
    from deltalake import WriterProperties
    from deltalake.transaction import CommitProperties

    if retention_hours < 0:
        raise UsageError(f"`retention_hours` must be >= 0, not {retention_hours}")
    output.check_exists()
    delta = output.format
    if not isinstance(delta, DeltaFormat):
        raise UsageError(
            f"{output.uri} is a Parquet output: `camray migrate --output {output.uri}` makes it Delta tables first"
        )
    lease = output.lease(f"optimize-{datetime.now(UTC):%Y%m%dT%H%M%SZ}", 300.0)
    lease.acquire(wait_seconds=wait_for_lease)
    report = Upkeep(output.uri)
    try:
        output.refresh()
        properties = WriterProperties(compression="ZSTD", max_row_group_size=ROW_GROUP_ROWS)
        for table in TABLES:
            if not delta.exists(table):
                continue
            dt = delta.table(table, refresh=True)
            report.files_before[table] = len(dt.file_uris())
            lease.check()
            dt.optimize.compact(
                target_size=target_bytes,
                writer_properties=properties,
                commit_properties=CommitProperties(custom_metadata={"camray.operation": "optimize"}),
            )
            dt.create_checkpoint()
            dt.cleanup_metadata()
            lease.check()
            removed = dt.vacuum(
                retention_hours=int(retention_hours),
                dry_run=False,
                enforce_retention_duration=False,
                full=True,
            )
            dt.update_incremental()
            report.files_after[table] = len(dt.file_uris())
            report.vacuumed[table] = len(removed)
            logger.info(
                "%s: %d files compacted into %d, %d files vacuumed",
                output.store.uri_of(table),
                report.files_before[table],
                report.files_after[table],
                len(removed),
            )
    finally:
        lease.release()
    return report
