"""PendingWrites: MLflow writes that wait out an outage, in order, kept on disk across a lost driver."""
import pytest
import requests

from library.search.pending import PENDING_FILE, PendingWrites
from library.tracking import TrackingUnavailableError


class Server:
    """Stands in for the tracking server's availability: `apply` writes while up, raises like requests when down."""

    def __init__(self):
        self.up, self.written = True, []

    def apply(self, record):
        if not self.up:
            raise requests.exceptions.ConnectionError("Connection refused")
        self.written.append(record["n"])


def test_writes_wait_out_an_outage_in_order_and_the_console_says_so_once(tmp_path, capsys):
    server = Server()
    writes = PendingWrites(server.apply, str(tmp_path), retry_s=0.0)
    writes.submit({"n": 1})
    server.up = False
    for n in (2, 3, 4):
        writes.submit({"n": n})
    assert server.written == [1] and (tmp_path / PENDING_FILE).exists()
    out = capsys.readouterr().out
    assert out.count("MLflow does not answer") == 1 and "Connection refused" in out
    server.up = True
    writes.submit({"n": 5})
    assert server.written == [1, 2, 3, 4, 5]
    assert "MLflow answers again: 4 delayed write(s)" in capsys.readouterr().out
    assert not (tmp_path / PENDING_FILE).exists()


def test_what_waits_survives_the_driver_and_is_written_first_by_the_next(tmp_path):
    server = Server()
    server.up = False
    PendingWrites(server.apply, str(tmp_path)).submit({"n": 1})  # then the driver dies
    server.up = True
    writes = PendingWrites(server.apply, str(tmp_path))  # the same command, run again
    writes.submit({"n": 2})
    assert server.written == [1, 2]


def test_retries_are_spaced_and_an_outage_past_the_limit_stops_with_a_clear_error(tmp_path):
    server = Server()
    server.up = False
    calls = []
    writes = PendingWrites(lambda r: (calls.append(r), server.apply(r)), str(tmp_path), retry_s=3600, give_up_s=0.0)
    writes.submit({"n": 1})
    writes.submit({"n": 2})  # within retry_s: queued, not tried
    assert len(calls) == 1 and len(writes.queue) == 2
    with pytest.raises(TrackingUnavailableError, match="has not answered.*2 write.*run the same command again"):
        writes.drain()
    assert (tmp_path / PENDING_FILE).exists()


def test_a_refused_write_is_raised_at_once_not_mistaken_for_an_outage(tmp_path):
    from mlflow.exceptions import MlflowException

    from library.search.pending import is_outage

    def refuse(record):
        raise MlflowException("Invalid value for parameter 'x'", error_code="INVALID_PARAMETER_VALUE")

    with pytest.raises(MlflowException, match="Invalid value"):
        PendingWrites(refuse, str(tmp_path)).submit({"n": 1})
    assert is_outage(MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/get failed with "
                                     "exception HTTPConnectionPool(...): Max retries exceeded"))
    assert is_outage(requests.exceptions.ConnectTimeout())


def test_an_outage_while_a_sweep_concludes_ends_in_one_clear_line_and_a_rerun_redoes_it(mlflow_store):
    import mlflow
    from mlflow.exceptions import MlflowException

    from library.search.outcome import SweepOutcome, conclude_once, is_complete

    parent = mlflow.MlflowClient().create_run("0").info.run_id

    def server_gone():
        raise MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with "
                              "exception Max retries exceeded")

    outcome = SweepOutcome(parent, None, resumed=False, finished=True)
    with pytest.raises(TrackingUnavailableError, match="while the sweep concluded.*run the same command again"):
        conclude_once(outcome, "sweep", "/state", server_gone)
    assert not is_complete(parent)
    assert conclude_once(outcome, "sweep", "/state", lambda: None) and is_complete(parent)
