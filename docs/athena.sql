CREATE EXTERNAL TABLE IF NOT EXISTS camray_results
LOCATION 's3://my-annotations/cam/results/'
TBLPROPERTIES ('table_type' = 'DELTA');

CREATE EXTERNAL TABLE IF NOT EXISTS camray_errors
LOCATION 's3://my-annotations/cam/errors/'
TBLPROPERTIES ('table_type' = 'DELTA');

CREATE EXTERNAL TABLE IF NOT EXISTS camray_runs
LOCATION 's3://my-annotations/cam/runs/'
TBLPROPERTIES ('table_type' = 'DELTA');
