"""App-level hooks: HTTP routes on app start (and the opt-in diagnostics)."""

from modules import script_callbacks

from lib_freediff.webui import diagnostics, routes


def _on_app_started(demo, app):
    routes.register(app)


def register_callbacks() -> None:
    script_callbacks.remove_callbacks_for_function(_on_app_started)
    script_callbacks.on_app_started(_on_app_started, name="freediff_routes")
    diagnostics.register_callbacks()
