"""The newest row of each image in a Parquet output, where succeeded runs' rows of one image pile up (a Delta table
holds one current row per image, and needs none of this).

The rule: among the rows of succeeded runs, the row of the run that comes last in run order (`started_at`, then
`run_id`). It is found in two streamed passes over `results/`, with DuckDB keeping to a memory limit and spilling
to a temporary folder beyond it, so the history's size does not decide the memory it takes:
1. over `image_uri` and `run_id` alone, DuckDB groups the rows by image and keeps the images written by more than
   one succeeded run, with the newest of those runs (a spilling hash aggregate; most images have one row);
2. over the columns asked for, each row is kept unless its image is among those and its run is not the newest;
   in Python, batch by batch, when at most `REWRITTEN_IN_MEMORY` images were rewritten, else by a DuckDB join.
The rows come in the order of the files that hold them (their names start with the run's id, which starts with
its UTC start time) and, within a file, as written. A sort of the history by image would take memory or disk in
proportion to the history; this order also keeps the earlier images first as the output grows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from camray.io.bounded_duckdb import bounded_duckdb

if TYPE_CHECKING:
    from camray.io.parquet_format import ParquetFormat

# Images written by more than one succeeded run, up to which the newest rows are told apart in Python (about
# 60 bytes an image); beyond it a DuckDB join, spilling, does it.
REWRITTEN_IN_MEMORY = 250_000


def newest_rows(
    parquet: ParquetFormat, run_order: pa.Array, schema: pa.Schema, memory_limit: str
) -> Iterator[pa.RecordBatch]:
    """`schema`'s columns of the newest row of every image of `results/` among the runs of `run_order` (succeeded
    runs' ids, newest first), in the order of the module's docstring."""
    wanted = schema.names
    of_succeeded = pads.field("run_id").isin(run_order)
    read = list(dict.fromkeys([*wanted, "image_uri", "run_id"]))
    rows = _with_run_order(parquet.scan("results", read, of_succeeded, all_rows=True), run_order)
    # One thread: it keeps the rows in the stream's order, the aggregate keeps to the limit (more threads each
    # take a share of it), and the passes are bound by reading the files and by the reader's Python anyway.
    with bounded_duckdb(memory_limit, threads=1) as con:
        keys = parquet.scan("results", ["image_uri", "run_id"], of_succeeded, all_rows=True)
        con.register("result_keys", _with_run_order(keys, run_order))
        con.execute(
            """
            CREATE TEMP TABLE rewritten AS
            SELECT image_uri, min(run_order) AS newest FROM result_keys GROUP BY image_uri HAVING count(*) > 1
            """
        )
        con.unregister("result_keys")
        ((count,),) = con.execute("SELECT count(*) FROM rewritten").fetchall()
        if count > REWRITTEN_IN_MEMORY:
            con.register("result_rows", rows)
            selected = ", ".join(f'r."{name}"' for name in wanted)
            query = f"""
                SELECT {selected} FROM result_rows r LEFT JOIN rewritten w ON w.image_uri = r.image_uri
                WHERE w.image_uri IS NULL OR w.newest = r.run_order
                """
            for batch in con.sql(query).to_arrow_reader(1024):
                # DuckDB's Arrow types may differ in details (list field names, string kinds): the table's own.
                yield batch.cast(schema)
            return
        rewritten = con.sql("SELECT image_uri, newest FROM rewritten").to_arrow_table()
    # Few images rewritten (the usual history): the rows are filtered here, and DuckDB's memory is given back.
    uris, newest = (rewritten.column(name).combine_chunks() for name in ("image_uri", "newest"))
    for batch in rows:
        if len(uris):
            position = pc.index_in(batch.column("image_uri"), value_set=uris)
            is_newest = pc.equal(pc.take(newest, position), batch.column("run_order"))
            batch = batch.filter(pc.or_kleene(pc.is_null(position), is_newest))
        yield batch.select(wanted).cast(schema)


def _with_run_order(reader: pa.RecordBatchReader, newest_first: pa.Array) -> pa.RecordBatchReader:
    """The stream with `run_order`: the position of each row's `run_id` in `newest_first` (0 is the newest run).
    Added to the stream, not joined in DuckDB, which cannot size an Arrow stream and would build its hash table
    from the history rather than from the few runs."""
    schema = reader.schema.append(pa.field("run_order", pa.int32()))

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            order = pc.index_in(batch.column("run_id"), value_set=newest_first)
            yield pa.RecordBatch.from_arrays([*batch.columns, order], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())
