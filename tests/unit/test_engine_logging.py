"""vLLM's logging set-up runs at every engine start. It must leave the process's other handlers
(Prefect's API log handler among them) open, since closing them under logging's lock made
Prefect's handler wait out its 5 s flush timeout at each start; vLLM's own loggers still report
errors, and only errors by default."""

import logging
import os

from metis_core.engine import vllm_engine


def clean_vllm_environment(monkeypatch) -> None:
    """The variables the engine sets, unset for the test and restored after it."""
    for name in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "VLLM_LOGGING_LEVEL",
                 "VLLM_CONFIGURE_LOGGING", "VLLM_LOGGING_CONFIG_PATH"):  # fmt: skip
        monkeypatch.setenv(name, "")  # (so that the teardown puts back what was there before)
        monkeypatch.delenv(name)


class Sentinel(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())

    def close(self) -> None:
        self.closed = True
        super().close()


def test_engine_start_leaves_other_handlers_open(monkeypatch, capfd):
    clean_vllm_environment(monkeypatch)
    vllm_log = logging.getLogger("vllm")
    for attribute, value in (("handlers", []), ("level", vllm_log.level), ("propagate", True)):
        monkeypatch.setattr(vllm_log, attribute, value)
    sentinel = Sentinel()
    root = logging.getLogger()
    root.addHandler(sentinel)
    try:
        vllm_engine._configure_environment()  # what PolicyEngine does before importing vLLM
        from vllm.config.logging import LoggingConfig
        from vllm.logger import configure_logging, init_logger

        configure_logging(LoggingConfig())  # what LLM() does at its start
        assert not sentinel.closed and sentinel in root.handlers
        logging.getLogger("elsewhere").warning("still heard")
        assert sentinel.records == ["still heard"]

        engine_log = init_logger("vllm.engine.test")
        engine_log.warning("a vLLM warning")
        engine_log.error("a vLLM error")
        err = capfd.readouterr().err
        assert "a vLLM error" in err and "a vLLM warning" not in err
        assert sentinel.records == ["still heard"]  # vLLM's loggers keep to their own handler
    finally:
        root.removeHandler(sentinel)


def test_a_users_vllm_logging_config_file_is_still_applied(monkeypatch, tmp_path):
    """VLLM_LOGGING_CONFIG_PATH needs vLLM's own set-up; it is not turned off then (vLLM refuses
    a config file with its set-up off)."""
    clean_vllm_environment(monkeypatch)
    config = tmp_path / "logging.json"
    config.write_text('{"version": 1, "disable_existing_loggers": false}')
    monkeypatch.setenv("VLLM_LOGGING_CONFIG_PATH", str(config))
    vllm_engine._configure_environment()
    assert "VLLM_CONFIGURE_LOGGING" not in os.environ  # vLLM's default: its set-up, on
    # (not applied here: vLLM's dictConfig would close this test process's handlers, pytest's too)
