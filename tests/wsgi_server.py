"""``python -m tests.wsgi_server``: the project served by a plain WSGI server (stdlib wsgiref), as
gunicorn or uWSGI would: ``get_wsgi_application()`` and nothing else, so no system checks run
and no task module is imported up front. Prints ``listening on PORT`` once it accepts requests."""

import os
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings_wsgi")

from django.core.wsgi import get_wsgi_application  # noqa: E402


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write(f"wsgi {format % args}\n")


def main() -> None:
    application = get_wsgi_application()
    server = make_server("127.0.0.1", 0, application, handler_class=QuietHandler)
    print(f"listening on {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
