"""A loopback HTTP server on a free port, serving from a thread for the duration of a test: the downloads' tests
(conftest's `serve`) and the hub's (test_hub.py) each give it their own request handler."""
import http.server
import threading


class Loopback:
    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
