"""Forge's ``modules_forge`` (present: the WebUI is Forge)."""
