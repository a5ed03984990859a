"""Development entry point: ``python run_backend.py`` (scripts/start.sh runs gunicorn instead)."""

from backend.app import create_app

if __name__ == "__main__":
    app = create_app()
    server = app.config["PEP"]["server"]
    app.run(host=server["host"], port=int(server["port"]), threaded=True)
