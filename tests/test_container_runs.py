"""What a run over shards or tables settles before it reads: the input's format, and settings that do not fit it."""

from __future__ import annotations

import pytest
from container_inputs import write_shard

from camray.config import load_config
from camray.container_runs import input_format
from camray.errors import ConfigError, SetupError
from camray.io.containers import WEBDATASET
from camray.io.sources import S3Settings


def test_settings_of_another_format_than_the_inputs_fail_naming_the_field(small_photos, tmp_path):
    shards = tmp_path / "shards"
    write_shard(shards / "s.tar", {"a": {"jpg": b"x"}})

    def resolved(source, **fields) -> str:
        config = load_config(overrides={"source.uri": str(source), **fields})
        return input_format(config, config.source.uri, S3Settings())

    assert resolved(shards, **{"source.labels_key": "labels"}) == WEBDATASET
    with pytest.raises(SetupError, match="`source.id_column` applies to Parquet image tables, which are never guessed"):
        resolved(shards, **{"source.id_column": "name"})
    with pytest.raises(SetupError, match="`source.labels_key` applies to WebDataset shards"):
        resolved(small_photos, **{"source.labels_key": "labels"})
    # Named outright, a format that does not fit the settings is refused with the config.
    with pytest.raises(ConfigError, match="`source.labels_key` applies to `source.format: webdataset`, not parquet"):
        load_config(overrides={"source.uri": str(shards), "source.format": "parquet", "source.labels_key": "x"})
    with pytest.raises(ConfigError, match="`source.image_column` applies to `source.format: parquet`, not files"):
        load_config(overrides={"source.uri": str(shards), "source.format": "files", "source.image_column": "png"})
