"""The WSGI entry point: ``gunicorn -c config/gunicorn.conf.py wsgi:app``."""

from cortex.app import create_app

app = create_app()
