"""A team's generated client (openapi-python-client on the live /openapi.json, as the README shows) uploads
an npz through the typed multipart body of createDataset and trains on it by ``ds:<id>``."""

from __future__ import annotations

import importlib

from tests.service.serving import served
from tests.service.test_api_openapi_client import generate_client_package
from tests.upload_files import good_npz


def test_generated_client_uploads_a_dataset_and_trains_on_it(stack, tmp_path, monkeypatch) -> None:
    generate_client_package(stack, tmp_path, monkeypatch, "cdp_client_ds")
    client_mod = importlib.import_module("cdp_client_ds.client")
    create_dataset = importlib.import_module("cdp_client_ds.api.datasets.create_dataset")
    list_datasets = importlib.import_module("cdp_client_ds.api.datasets.list_datasets")
    create_train_job = importlib.import_module("cdp_client_ds.api.jobs.create_train_job")
    models = importlib.import_module("cdp_client_ds.models")
    types = importlib.import_module("cdp_client_ds.types")

    with served(stack.client.app) as base_url:
        client = client_mod.Client(base_url=base_url)
        body = models.CreateDatasetDatasetUpload(
            file=types.File(payload=good_npz(n=50), file_name="mine.npz"), name="from the client")
        reply = create_dataset.sync_detailed(client=client, body=body)
        assert reply.status_code == 201, reply.content
        dataset = reply.parsed
        assert isinstance(dataset, models.Dataset) and dataset.num_images == 50
        assert dataset.ref == f"ds:{dataset.id}"
        listed = list_datasets.sync(client=client)
        assert dataset.id in {d.id for d in listed.items}

        job = create_train_job.sync(client=client, body=models.TrainSpec.from_dict(
            {"kind": "classifier", "dataset": dataset.ref, "epochs": 1, "batch_size": 16,
             "arch_options": {"width": 4, "feature_dim": 8}, "eval_samples": 8, "eval_attack_steps": 1}))
        assert isinstance(job, models.JobRecord), job
    done = stack.wait(job.id, until={"succeeded", "failed", "canceled"}, timeout=120)
    assert done["status"] == "succeeded", done["error"]
    metrics = stack.client.get(f"/jobs/{job.id}/metrics").json()["metrics"]
    assert 0 <= metrics["test"]["clean_acc"] <= 1
