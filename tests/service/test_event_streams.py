"""The event streams of a job and a pipeline on the wire (no worker: the records are written here): the
framing and JSON the clients parse, a missing one a 404 before any stream starts, bad parameters a 422."""

from __future__ import annotations

import threading
import time

from tests.service.events import read_events


def test_a_finished_jobs_stream_is_its_progress_then_its_state_on_the_wire(client) -> None:
    repo = client.app.state.service.repo
    job = repo.create(kind="train", owner="anonymous", input={"kind": "classifier", "dataset": "digits"})
    done = repo.finish(job.id, "succeeded")
    with client.stream("GET", f"/jobs/{job.id}/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.headers["cache-control"] == "no-cache" and stream.headers["x-accel-buffering"] == "no"
        text = stream.read().decode()
    blocks = text.split("\n\n")
    assert blocks[-1] == "" and len(blocks) == 3, text  # two events, each ended by a blank line
    assert blocks[0].startswith(f'event: progress\ndata: {{"id": "{job.id}", "status": "succeeded", ')
    assert blocks[1].startswith("event: state\ndata: {") and '"status": "succeeded"' in blocks[1]
    events = read_events(client, f"/jobs/{job.id}/events")
    assert [name for name, _ in events] == ["progress", "state"]
    assert events[1][1] == client.get(f"/jobs/{job.id}").json() == done.model_dump(mode="json")


def test_a_jobs_stream_reports_each_state_change_and_ends_with_the_terminal_one(client) -> None:
    repo = client.app.state.service.repo
    job = repo.create(kind="train", owner="anonymous", input={"kind": "classifier", "dataset": "digits"})

    def run_it() -> None:
        time.sleep(0.3)
        repo.mark_running(job.id)
        time.sleep(0.3)
        repo.finish(job.id, "failed", error="it broke")

    worker = threading.Thread(target=run_it)
    worker.start()
    try:
        events = read_events(client, f"/jobs/{job.id}/events", poll_s=0.05)
    finally:
        worker.join()
    states = [data["status"] for name, data in events if name == "state"]
    assert states == ["queued", "running", "failed"], events
    assert events[0][0] == "state" and events[-1][0] == "state" and events[-1][1]["error"] == "it broke"
    assert all(data["id"] == job.id for _, data in events)


def test_a_missing_job_or_pipeline_is_a_404_problem_and_a_bad_poll_a_422(client) -> None:
    missing = "0" * 24
    for path in (f"/jobs/{missing}/events", f"/pipelines/{missing}/events"):
        reply = client.get(path)
        assert reply.status_code == 404, reply.text
        assert reply.headers["content-type"] == "application/problem+json"
        # the parameters are checked before the record is read, as for every other route
        reply = client.get(path, params={"poll_s": 99})
        assert reply.status_code == 422 and reply.json()["errors"][0]["field"] == "query.poll_s", reply.text
