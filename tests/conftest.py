"""Shared test set-up: offline, CPU, deterministic, one thread, and a loopback HTTP server for downloads."""
import http.server
import os
import threading

os.environ["HF_HUB_OFFLINE"] = "1"          # nothing in the suite may touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: the suite's models are tiny, so a second thread gains little, and on a machine whose cores other
# work is using, OpenMP threads that wait for each other made the suite 15-40x slower.
torch.set_num_threads(1)


class Server:
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
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


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
