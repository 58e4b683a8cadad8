"""sd-webui-freediff core: FreeU, FastComposer and Any-Size Diffusion as plain torch code.

Nothing in this package (outside ``lib_freediff.webui``) imports the WebUI's ``modules``.
"""

__version__ = "0.1.0"
