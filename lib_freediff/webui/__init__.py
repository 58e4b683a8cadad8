"""The only package of sd-webui-freediff that imports the WebUI's ``modules``."""
