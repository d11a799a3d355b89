CREATE EXTERNAL TABLE IF NOT EXISTS camray_results (
  `image_uri` string,
  `source_version` string,
  `container_uri` string,
  `content_sha256` string,
  `width` int,
  `height` int,
  `model` string,
  `method` string,
  `labels` array<struct<class_id:int,label:string>>,
  `predictions` array<struct<class_id:int,label:string,score:float>>,
  `cams` array<struct<class_id:int,heatmap_height:int,heatmap_width:int,heatmap:binary>>,
  `boxes` array<struct<class_id:int,label:string,score:float,x0:float,y0:float,x1:float,y1:float>>,
  `mask` struct<class_id:int,size:array<int>,counts:string>,
  `masks` array<struct<class_id:int,label:string,size:array<int>,counts:string>>,
  `ignore_mask` struct<size:array<int>,counts:string>,
  `config_fingerprint` string,
  `run_id` string
)
STORED AS PARQUET
LOCATION 's3://my-annotations/cam/results/'
TBLPROPERTIES ('camray.schema_version' = '3');

CREATE EXTERNAL TABLE IF NOT EXISTS camray_errors (
  `image_uri` string,
  `source_version` string,
  `container_uri` string,
  `stage` string,
  `error_type` string,
  `message` string,
  `run_id` string
)
STORED AS PARQUET
LOCATION 's3://my-annotations/cam/errors/'
TBLPROPERTIES ('camray.schema_version' = '3');

CREATE EXTERNAL TABLE IF NOT EXISTS camray_runs (
  `run_id` string,
  `status` string,
  `started_at` timestamp,
  `finished_at` timestamp,
  `config_fingerprint` string,
  `config_json` string,
  `model` string,
  `weights_source` string,
  `weights_sha256` string,
  `input_uri` string,
  `listed` bigint,
  `skipped` bigint,
  `results` bigint,
  `errors` bigint,
  `seconds` double,
  `schema_version` int,
  `attempt` int,
  `message` string,
  `resumed` bigint,
  `images_per_second` double,
  `errors_by_stage` string,
  `io_retries` bigint,
  `camray_version` string,
  `git_commit` string,
  `ray_version` string,
  `torch_version` string,
  `nodes` int,
  `gpu_types` string,
  `host` string,
  `stats_uri` string
)
STORED AS PARQUET
LOCATION 's3://my-annotations/cam/runs/'
TBLPROPERTIES ('camray.schema_version' = '3');
