"""The request id rides on task messages and is the worker's request id while the task runs."""

from types import SimpleNamespace

from dataflare_portal.celery import REQUEST_ID_HEADER, _adopt_request_id, _attach_request_id, _drop_request_id
from dataflare_portal.core.requestctx import request_id_var


def test_a_message_sent_during_a_request_carries_its_id():
    headers = {}
    _attach_request_id(headers=headers)
    assert REQUEST_ID_HEADER not in headers  # no request, no header
    token = request_id_var.set("req-7")
    try:
        _attach_request_id(headers=headers)
    finally:
        request_id_var.reset(token)
    assert headers[REQUEST_ID_HEADER] == "req-7"


def test_a_worker_task_runs_under_the_messages_id_and_forgets_it_after():
    task = SimpleNamespace(request=SimpleNamespace(is_eager=False, **{REQUEST_ID_HEADER: "req-9"}))
    _adopt_request_id(task_id="t1", task=task)
    assert request_id_var.get() == "req-9"
    headers = {}
    _attach_request_id(headers=headers)  # what the task sends goes on with the same id
    assert headers[REQUEST_ID_HEADER] == "req-9"
    _drop_request_id(task_id="t1")
    assert request_id_var.get() == ""


def test_an_eager_task_keeps_the_callers_id():
    token = request_id_var.set("req-caller")
    try:
        eager = SimpleNamespace(request=SimpleNamespace(is_eager=True, **{REQUEST_ID_HEADER: "other"}))
        _adopt_request_id(task_id="t2", task=eager)
        assert request_id_var.get() == "req-caller"
        _drop_request_id(task_id="t2")
        assert request_id_var.get() == "req-caller"
    finally:
        request_id_var.reset(token)
