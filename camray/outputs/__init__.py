"""What users do with a job's output: look at it (`report`, a static HTML page), query it (`query`, DuckDB views
over the Parquet tables), export it (`export`, COCO instances JSON and YOLO labels).

All of them read an output, local or `s3://`, with the same `S3Settings`/`filesystem_for` as the job and no
DuckDB extension downloaded: `tables` streams pyarrow datasets a few files at a time, `query` hands the files to
DuckDB's Parquet reader; the `runs` table is read tolerantly, so that outputs written under any schema version
are read alike (missing columns are null).
"""
