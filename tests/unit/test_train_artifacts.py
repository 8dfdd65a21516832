"""The training flow's Prefect artifacts: keys Prefect accepts, and a refusal never stops a run."""

from flows.train import _artifact, _key


def test_artifact_keys_are_lowercase_letters_digits_and_dashes():
    key = _key("My_Run.v2-20261122-101010-ab12", "progress")
    assert key == "metis-progress-my-run-v2-20261122-101010-ab12"
    assert len(_key("x" * 300, "summary")) == 100


def test_a_refused_artifact_is_reported_not_raised(capsys):
    def refuse(*args, **kwargs):
        raise ConnectionError("server gone")

    assert _artifact(refuse, 50.0, key="metis-progress-x") is None
    assert "ConnectionError: server gone" in capsys.readouterr().out
    assert _artifact(lambda x, key: (x, key), 1, key="k") == (1, "k")
