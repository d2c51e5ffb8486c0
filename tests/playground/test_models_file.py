"""Several models in one playground: a models file of local folders and endpoints."""

import pytest
import yaml
from gradio_client import Client

from playground.backends.loading import load_backends
from playground.models_file import MODEL_KEYS
from playground.settings import Settings
from tests.conftest import ROOT, local_and_remote, serve
from tests.fakes import FakeServer


def test_the_example_file_is_the_original_spaces_pair():
    entries = yaml.safe_load((ROOT / "models.example.yaml").read_text())["models"]
    assert [e["name"] for e in entries] == ["StarChat-β", "StarChat-α"]
    assert all(set(e) - {"name"} <= MODEL_KEYS and e["backend"] == "endpoint" for e in entries)


def test_a_local_model_and_an_endpoint_side_by_side(tiny_checkpoint, tmp_path):
    with FakeServer() as tgi:
        models = local_and_remote(tmp_path, tiny_checkpoint, tgi.url, "Tiny (local)")
        with serve("--models-file", str(models), "--cache-dir", str(tmp_path)) as (url, chat):
            assert list(chat.backends) == ["Tiny (local)", "Remote"]
            client = Client(url, verbose=False)
            history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
            remote = client.predict(
                message="sort?", history=history, model="Remote", max_new_tokens=64, api_name="/chat"
            )
            assert remote == tgi.script.reply  # the same conversation went to the endpoint
            local = client.predict(message="sort?", history=history, max_new_tokens=8, api_name="/chat")
            assert local != tgi.script.reply and len(tgi.script.requests) == 1
            config = str(client.view_api(print_info=False, return_format="dict"))
            assert "model" in config


@pytest.mark.parametrize(
    "text, said",
    [
        ("models:\n  - model: x\n", "entry 0 needs a name"),
        ("models: [1, 2]\n", "entry 0 needs a name"),
        ("- name: a\n", "no list of entries under 'models:'"),
        ("models: [\n", "cannot be read as YAML"),
        ("models:\n  - !!python/object/apply:os.system [echo hi]\n", "cannot be read as YAML"),
        ("models:\n  - {name: a, model: x}\n  - {name: a, model: y}\n", "two entries are named 'a'"),
        ("models:\n  - {name: a, model: x, backend: bogus}\n", "entry 0: backend must be one of local, endpoint"),
        ("models:\n  - {name: a, model: x, endpoint_timeout: abc}\n", "entry 0: endpoint_timeout must be a number"),
        ("models:\n  - {name: ' ', model: x}\n", "entry 0 needs a name"),
        ("models:\n  - {name: a, model: x}\n  - {name: 'a ', model: y}\n", "two entries are named 'a'"),
        ("models:\n  - {name: a, model: x, endpoint_token: 12345}\n", "entry 0: endpoint_token must be text$"),
    ],
)
def test_a_bad_models_file_is_named(tmp_path, text, said):
    bad = tmp_path / "models.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=said):
        load_backends(Settings.from_args(["--models-file", str(bad)], env={}))


def test_a_model_that_cannot_load_is_named_by_its_entry(tiny_checkpoint, tmp_path):
    models = tmp_path / "models.yaml"
    models.write_text(
        f"models:\n  - {{name: good, model: {tiny_checkpoint}}}\n  - {{name: gone, model: {tmp_path}/no}}\n"
    )
    with pytest.raises(ValueError, match=rf"entry 1 \(gone\): {tmp_path}/no: not a model's folder"):
        load_backends(Settings.from_args(["--models-file", str(models)], env={}))
