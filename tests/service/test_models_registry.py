"""/models on the real service: a diffusers archive, a classifier's safetensors + config, refusals (a
pickle with code, '..', not an archive), model:<id> in a generation job, promotion of a finished training
job, and two teams. The formats and refusals that need no service (the hub's flat layout, a forward that
fails, weights that do not fit, a wrong kind) are in tests/test_models_upload.py."""

from __future__ import annotations

import io
import pickle
import shutil
import zipfile
from pathlib import Path

from core.jobs.apikeys import create_key
from core.settings import get_settings


def zipped(root: Path, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(root).as_posix())
    return buffer.getvalue()


def post_model(client, data: bytes, name: str = "m", *, config: bytes | None = None, headers=None, **fields):
    files = {"file": ("model.bin", data, "application/octet-stream")}
    if config is not None:
        files["config"] = ("config.json", config, "application/json")
    return client.post("/models", files=files, data={"name": name, **fields}, headers=headers or {})


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/cdp-pwned",))


def test_register_models_and_generate_with_them(stack, tiny_models, tmp_path) -> None:
    client = stack.client
    unet = post_model(client, zipped(tiny_models / "unet-t", prefix="unet-t/"), name="my unet")
    assert unet.status_code == 201, unet.text
    diffusion = unet.json()
    assert diffusion["kind"] == "diffusion" and diffusion["image_shape"] == [16, 16, 1]
    assert diffusion["parameters"] > 100_000 and diffusion["ref"] == f"model:{diffusion['id']}"
    again = post_model(client, zipped(tiny_models / "unet-t", prefix="unet-t/"), name="again")
    assert again.status_code == 200 and again.json()["id"] == diffusion["id"]

    cnn_dir = tiny_models / "cnn-t"
    cnn = post_model(client, (cnn_dir / "model.safetensors").read_bytes(), name="my cnn",
                     config=(cnn_dir / "config.json").read_bytes(), kind="classifier")
    assert cnn.status_code == 201, cnn.text
    classifier = cnn.json()
    assert classifier["kind"] == "classifier" and classifier["num_classes"] == 10
    assert classifier["arch"] == "small_cnn" and classifier["image_shape"] == [16, 16, 1]
    assert {m["id"] for m in client.get("/models").json()["items"]} == {diffusion["id"], classifier["id"]}

    wrong = client.post("/jobs/generate", json={"dataset": "digits", "model": classifier["ref"],
                                                "classifier": classifier["ref"], "count": 4})
    assert wrong.status_code == 409 and wrong.json()["errors"][0]["field"] == "body.model"
    gen = client.post("/jobs/generate", json={
        "dataset": "digits", "model": diffusion["ref"], "classifier": classifier["ref"], "count": 6,
        "steps": 2, "schedule": "uniform", "batch_size": 8, "loss": "hnm", "lam": 10.0})
    assert gen.status_code == 202, gen.text
    done = stack.wait(gen.json()["id"], until={"succeeded", "failed", "canceled"}, timeout=120)
    assert done["status"] == "succeeded", done["error"]

    train = client.post("/jobs/train", json={"kind": "classifier", "dataset": "digits", "epochs": 1,
                                             "arch_options": {"width": 4, "feature_dim": 8},
                                             "eval_samples": 8, "eval_attack_steps": 1})
    trained = stack.wait(train.json()["id"], until={"succeeded", "failed", "canceled"}, timeout=120)
    assert trained["status"] == "succeeded", trained["error"]
    promoted = client.post("/models", json={"from_job": f"job:{trained['id']}", "name": "promoted"})
    assert promoted.status_code == 201, promoted.text
    assert promoted.json()["kind"] == "classifier" and promoted.json()["source"] == f"job:{trained['id']}"
    not_train = client.post("/models", json={"from_job": f"job:{done['id']}", "name": "x"})
    assert not_train.status_code == 409 and not_train.json()["errors"][0]["field"] == "body.from_job"


def test_bad_models_are_refused_and_nothing_is_stored(client, store, tiny_models, tmp_path) -> None:
    pickled = tmp_path / "evil"
    shutil.copytree(tiny_models / "unet-t", pickled)
    for weights in (pickled / "unet").glob("*.safetensors"):
        weights.unlink()
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Evil()))
    slip = io.BytesIO()
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("../config.json", "{}")
    cases = {
        "pickle with code as .bin": (post_model(client, zipped(pickled)), "body.file"),
        "config not json": (post_model(client, b"x" * 64, config=b"{nope"), "body.config"),
        "zip slip": (post_model(client, slip.getvalue()), "body.file"),
        "not an archive": (post_model(client, b"hello"), "body.file"),
    }
    for case, (reply, field) in cases.items():
        assert reply.status_code == 422, (case, reply.text)
        assert reply.json()["errors"][0]["field"] == field, (case, reply.text)
        assert "/tmp/" not in reply.text, reply.text
    assert not Path("/tmp/cdp-pwned").exists()
    assert [i.key for i in store.list("registry/")] == []


def test_models_of_another_team_are_not_found(service_env, monkeypatch, tmp_path, tiny_models,
                                              redis_client) -> None:
    path = tmp_path / "keys.json"
    a = {"Authorization": f"Bearer {create_key(path, team='team-a')[1]}"}
    b = {"Authorization": f"Bearer {create_key(path, team='team-b')[1]}"}
    monkeypatch.setenv("CDP_API_KEYS_FILE", str(path))
    get_settings.cache_clear()
    from fastapi.testclient import TestClient

    from api.app import create_app
    from core.storage import LocalStore

    settings = get_settings()
    shutil.copytree(tiny_models / "cnn-t", settings.model_dir / "cnn-t")
    with TestClient(create_app(settings, store=LocalStore(settings.store_root),
                               redis_client=redis_client)) as client:
        mine = post_model(client, zipped(tiny_models / "unet-t"), headers=a).json()
        assert client.get(f"/models/{mine['id']}", headers=b).status_code == 404
        assert client.delete(f"/models/{mine['id']}", headers=b).status_code == 404
        assert client.get("/models", headers=b).json()["items"] == []
        spec = {"dataset": "digits", "model": mine["ref"], "classifier": "cnn-t", "count": 4}
        refused = client.post("/jobs/generate", json=spec, headers=b)
        assert refused.status_code == 404 and refused.json()["errors"][0]["field"] == "body.model"
        queued = client.post("/jobs/generate", json=spec, headers=a)  # no worker here: it stays queued
        assert queued.status_code == 202, queued.text
        in_use = client.delete(f"/models/{mine['id']}", headers=a)
        assert in_use.status_code == 409 and queued.json()["id"] in in_use.json()["detail"]
        from core.jobs.records import JobRepository

        JobRepository(LocalStore(settings.store_root), redis_client).finish(queued.json()["id"], "canceled")
        assert client.delete(f"/models/{mine['id']}", headers=a).status_code == 204
        assert client.get(f"/models/{mine['id']}", headers=a).status_code == 404
