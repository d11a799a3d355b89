"""Where images come from and where rows go: listing and bytes (local, S3), the Parquet schema, the staged sink."""
