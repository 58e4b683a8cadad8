"""A stand-in for Forge's ``backend`` (its model patchers and sampling function), as small as the tests need and
true to the signatures and behaviour sd-webui-freediff relies on (read from Forge main)."""
