from tests.conftest import auth


def test_create_and_predict(client):
    r = client.post("/v1/models", json={"name": "m1", "task": "binary", "input_dim": 3, "hidden": [4]})
    assert r.status_code == 201, r.text
    r = client.post("/v1/models/m1/predict", json={"inputs": [[1, 2, 3]]})
    assert r.status_code == 200
    assert r.json()["version"] == 1


def test_anon_refused(anon):
    r = anon.get("/v1/models")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert anon.get("/v1/models", headers=auth("nope")).status_code == 401
