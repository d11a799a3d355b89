"""The predictor actor built in process, as a run builds it: the setup resolved from the config, then handed over
as plain data (`camray.models.setup`)."""

from __future__ import annotations

from camray.config import JobConfig
from camray.models import resolve_setup
from camray.predictor import Predictor


def predictor_for(config: JobConfig, run_id: str = "test-run") -> Predictor:
    setup = resolve_setup(config.model, config.cam, config.tiling).setup
    return Predictor(config.model_dump(mode="json"), setup.to_plain(), run_id, {})
