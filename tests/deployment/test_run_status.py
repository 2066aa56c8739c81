"""The launchers' exit code comes from the SuperLink's status of the run (``flwr ls --format json``), and a
failed run's error is one readable line (no Ray wrapping)."""

from __future__ import annotations

import json

import pytest

from atmflow.rounds.exchange import client_error
from atmflow.run_status import parse_run_status, started_run_id


def _ls(*runs: tuple[str, str, str, str]) -> str:
    """``flwr ls --format json`` output in flwr 1.42's shape (cli/ls.py ``_to_json``), trimmed to what matters."""
    rows = [{"run-id": rid, "federation-id": "", "fab-id": "atmflow/atmflow", "fab-name": "atmflow",
             "fab-version": "0.1.0", "fab-hash": "ab12", "status": status, "status-details": details,
             "elapsed": "00:00:41", "pending-at": pending, "starting-at": pending, "running-at": pending,
             "finished-at": pending, "network-traffic": {"inbound-bytes": 0, "outbound-bytes": 0, "total-bytes": 0},
             "compute-time": {"serverapp-seconds": 1.0, "clientapp-seconds": 2.0, "total-seconds": 3.0}}
            for rid, status, details, pending in runs]
    return json.dumps({"success": True, "runs": rows})


RAY_REASON = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run() "
              "(pid=4242, ip=127.0.0.1, actor_id=abc)\n  File \"/venv/flwr/simulation/ray_transport/ray_actor.py\", "
              "line 65, in run\n    raise ClientAppException(str(ex)) from ex\n"
              "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. Message: "
              "probe head needs examples of every class; classes [3] have none in the training split'>")


def test_completed_run() -> None:
    status = parse_run_status(_ls(("7", "finished:completed", "", "2026-01-01 10:00:00")))
    assert (status.run_id, status.completed, status.error()) == ("7", True, "")


def test_failed_run_gives_the_serverapps_exception_once() -> None:
    details = ("ServerApp failed with exception: train round 1: no valid reply from task(s) ['digits'] "
               "(digits: error 2 on node 123: probe head needs examples of every class)")
    status = parse_run_status(_ls(("7", "finished:failed", details, "2026-01-01 10:00:00")))
    assert not status.completed and status.finished
    assert status.error() == ("run 7 finished:failed: train round 1: no valid reply from task(s) ['digits'] "
                              "(digits: error 2 on node 123: probe head needs examples of every class)")


def test_picks_the_named_run_or_the_latest() -> None:
    text = _ls(("3", "finished:completed", "", "2026-01-01 09:00:00"),
               ("9", "finished:stopped", "", "2026-01-01 11:00:00"))
    assert parse_run_status(text).run_id == "9"
    assert parse_run_status(text, "3").completed
    assert parse_run_status(text, "9").error() == "run 9 finished:stopped"


@pytest.mark.parametrize("text", ["", "not json", json.dumps({"success": False, "error": "no SuperLink"}),
                                  _ls()])
def test_no_run_is_an_error_naming_the_output(text: str) -> None:
    with pytest.raises(ValueError, match="flwr ls"):
        parse_run_status(text)


def test_started_run_id() -> None:
    assert started_run_id("Loading project...\n🎊 Successfully started run 8157203517249713000\n") == \
        "8157203517249713000"
    assert started_run_id("Error: no connection") is None


def test_client_error_drops_rays_wrapping() -> None:
    assert client_error(RAY_REASON) == ("probe head needs examples of every class; classes [3] have none "
                                        "in the training split")
    assert client_error("  plain reason \n") == "plain reason"


def test_a_serverapp_that_died_is_named_with_what_to_do() -> None:
    """Flower reports a killed ServerApp only as a missed heartbeat; the error says what it means and what to do."""
    status = parse_run_status(_ls(("7", "finished:failed", "No heartbeat received from the task", "2026-01-01")))
    assert status.error().startswith("run 7 finished:failed: No heartbeat received from the task: the ServerApp "
                                     "process stopped without a word (killed, or out of memory")
    assert "resume=true" in status.error()
