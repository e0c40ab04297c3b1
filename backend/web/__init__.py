"""The web tier: the Flask app factory, blueprints, schemas, observability and the gunicorn worker class."""
