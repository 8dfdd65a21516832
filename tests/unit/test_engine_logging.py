"""vLLM's logging set-up runs at every engine start. It must leave the process's other handlers
(Prefect's API log handler among them) open, since closing them under logging's lock made
Prefect's handler wait out its 5 s flush timeout at each start; vLLM's own loggers still report
errors, and only errors by default."""

import logging

from metis_core.engine import vllm_engine


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
    for name in ("VLLM_CONFIGURE_LOGGING", "VLLM_LOGGING_LEVEL"):
        monkeypatch.delenv(name, raising=False)
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
