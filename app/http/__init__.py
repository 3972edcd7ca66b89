"""The HTTP edge: everything that knows about Sanic lives in this package and `app.blueprints`."""
