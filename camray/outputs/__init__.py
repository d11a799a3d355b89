"""What users do with a job's output: look at it (`report`, a static HTML page), query it (`query`, DuckDB views
over the tables), export it (`export`, COCO instances JSON and YOLO labels), and the Athena DDL of its tables.

All of them read an output, local or `s3://`, through one `camray.io.output.Output` (the job's S3 settings, no
DuckDB extension downloaded), which gives them the current rows whatever the format: a Delta table's current
version, or a Parquet output's rows of succeeded runs; outputs written under any schema version are read alike
(missing columns are null).
"""
