"""What users do with a job's output: look at it (`report`, a static HTML page), query it (`query`, DuckDB views
over the Parquet tables), export it (`export`, COCO instances JSON and YOLO labels).

All of them read an output, local or `s3://`, through `tables`: the same `S3Settings`/`filesystem_for` as the
job, pyarrow datasets (no DuckDB extension is downloaded), and the `runs` table read tolerantly, so that
outputs written under any schema version are read alike (missing columns are null).
"""
