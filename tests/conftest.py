"""Shared test set-up: offline, CPU, deterministic, one thread, a loopback HTTP server for downloads, and the
learning tests' seed and floors (swept over seeds, CPU kernels and threads by tests/audit_floors.py)."""
import http.server
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"          # nothing in the suite may touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from loopback import Loopback  # noqa: E402

# One thread: the suite's models are tiny, so a second thread gains little, and on a machine whose cores other
# work is using, OpenMP threads that wait for each other made the suite 15-40x slower.
torch.set_num_threads(int(os.environ.get("SSMLORA_TEST_THREADS", "1")))

# A learning test trains with `seed` (0 in the suite) and checks its score with `learned`; the "worst" in its comment is
# the lowest score (the highest, for .below) over 5 seeds x 3 CPU kernel sets (AVX-512, AVX2, default) x 1 and 2
# threads, measured with tests/audit_floors.py, and the floor sits well below it. The audit sets
# SSMLORA_TEST_SEEDS=0,1,2,3,4 (each such test then runs once per seed) and SSMLORA_TEST_SCORES=FILE (every score
# checked is appended there), so that each floor can be set well below the worst score over seeds and kernels.
SEEDS = [int(s) for s in os.environ.get("SSMLORA_TEST_SEEDS", "0").split(",")]


def pytest_generate_tests(metafunc):
    if "seed" in metafunc.fixturenames and len(SEEDS) > 1:
        metafunc.parametrize("seed", SEEDS, ids=[f"seed{s}" for s in SEEDS])


@pytest.fixture
def seed():
    return SEEDS[0]


class Learned:
    """learned.at_least(score, floor, what) and .below(score, ceiling, what): the assertion, and the score kept for
    the audit when SSMLORA_TEST_SCORES names a file."""

    def __init__(self, node):
        self.node = node

    def record(self, what, score, bound, side):
        path = os.environ.get("SSMLORA_TEST_SCORES")
        if path:
            name = self.node.nodeid.replace(f"seed{self.node.funcargs.get('seed')}-", "").replace(
                f"[seed{self.node.funcargs.get('seed')}]", "")
            line = dict(test=name, what=what, score=float(score), bound=bound, side=side,
                        seed=self.node.funcargs.get("seed"), kernel=torch.backends.cpu.get_cpu_capability(),
                        threads=torch.get_num_threads())
            with open(path, "a") as f:  # one short line per write: the two workers' lines do not interleave
                f.write(json.dumps(line) + "\n")

    def at_least(self, score, floor, what="accuracy"):
        self.record(what, score, floor, ">=")
        assert score >= floor, f"{what} {score:.4f} is below its floor {floor}"

    def below(self, score, ceiling, what="accuracy"):
        self.record(what, score, ceiling, "<")
        assert score < ceiling, f"{what} {score:.4f} is not below {ceiling}"


@pytest.fixture
def learned(request):
    return Learned(request.node)


class Server(Loopback):
    """A loopback HTTP server for the duration of a test. files: {name: bytes}; mode "truncate" announces the
    full length but sends half and hangs up."""

    def __init__(self, files, mode="ok"):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.mode == "truncate" else body)

            def log_message(self, *args):
                pass

        self.files, self.mode, self.requests = files, mode, []
        super().__init__(Handler)


@pytest.fixture
def serve():
    """serve({name: bytes}, mode="ok") starts a loopback server for this test; it is stopped afterwards."""
    started = []

    def start(files, mode="ok"):
        started.append(Server(files, mode))
        return started[-1]
    yield start
    for s in started:
        s.stop()


def pytest_collection_modifyitems(config, items):
    """With SSMLORA_TEST_SCORES set (tests/audit_floors.py), only the learning tests run."""
    if os.environ.get("SSMLORA_TEST_SCORES"):
        keep = [item for item in items if "learned" in getattr(item, "fixturenames", ())]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
