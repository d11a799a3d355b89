"""`camray query`: DuckDB over an output's tables, local or `s3://`, with no DuckDB extension.

`connect(output)` returns a DuckDB connection with these views:
- `results`, `errors`, `runs`: the tables, restricted to succeeded runs (`all_runs=True` shows every row);
- `predictions`: one row per image and top-k class (`image_uri`, `run_id`, `model`, `rank`, `class_id`,
  `label`, `score`);
- `boxes`: one row per box (`image_uri`, `run_id`, `width`, `height`, `rank`, `class_id`, `label`,
  `score`, `x0`, `y0`, `x1`, `y1`: pixel-edge coordinates in original pixels).

Each table is a pyarrow dataset registered in DuckDB (S3 is reached by pyarrow, as in the job; DuckDB's
`httpfs` extension, downloaded at run time, is not needed). DuckDB pushes column selections and filters
down into the dataset's Parquet scan; the restriction to succeeded runs is a filter on the dataset itself.
"""

from __future__ import annotations

import duckdb
import pyarrow.dataset as pads

from camray.io.layout import TABLES
from camray.outputs.tables import Output

VIEWS = (*TABLES, "predictions", "boxes")
# DuckDB's working memory for a query (its default is 80% of the machine's); a query's joins, aggregates and
# sorts spill to disk beyond it, so one over a long history does not take the machine.
QUERY_MEMORY_LIMIT = "256MB"

_DERIVED = {
    "predictions": """
        SELECT image_uri, run_id, model, generate_subscripts(predictions, 1) AS rank,
               unnest(predictions, recursive := true)
        FROM results""",
    "boxes": """
        SELECT image_uri, run_id, width, height, generate_subscripts(boxes, 1) AS rank,
               unnest(boxes, recursive := true)
        FROM results""",
}


def connect(
    output: Output | str,
    all_runs: bool = False,
    memory_limit: str = QUERY_MEMORY_LIMIT,
    spill_folder: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views of this module's docstring over `output` (an `Output`, or a
    URI reached with the default S3 settings: the AWS chain and `AWS_ENDPOINT_URL`). DuckDB keeps to
    `memory_limit` and spills beyond it to `spill_folder` (DuckDB's own `.tmp` in the working folder when None)."""
    if isinstance(output, str):
        output = Output(output)
    if not isinstance(output, Output):
        raise TypeError(f"`output` must be an Output or a URI, not {type(output).__name__}")
    output.check_exists()
    config = {"memory_limit": memory_limit}
    if spill_folder is not None:
        config["temp_directory"] = spill_folder
    con = duckdb.connect(config=config)
    datasets: dict[str, pads.Dataset] = {name: output.dataset(name) for name in TABLES}
    if not all_runs:
        succeeded = output.succeeded_run_ids()
        datasets = {name: dataset.filter(pads.field("run_id").isin(succeeded)) for name, dataset in datasets.items()}
    for name, dataset in datasets.items():
        # Registered under a private name, then exposed as a view: a view can be selected from and joined like
        # a table, and the derived views below refer to the restricted rows.
        con.register(f"_{name}", dataset)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}")
    for name, sql in _DERIVED.items():
        con.execute(f"CREATE VIEW {name} AS {sql}")
    return con
