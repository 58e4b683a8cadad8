"""A small stand-in for Forge's ``modules`` package (lllyasviel/stable-diffusion-webui-forge main), for tests only.

Forge is AUTOMATIC1111 v1.10.1's ``modules`` with its own ``backend`` underneath; the files here are the ones whose
behaviour Forge changed for what sd-webui-freediff touches (processing: per-pass ``forge_objects`` resets and the
hires pass's two ``process_before_every_sampling`` calls; the CFG denoiser calling ``backend``'s sampling function
with no ``cfg_denoised`` callback; the k-diffusion sampler's inner model; ``PostprocessImageArgs`` with an index).
Every other module is the A1111 stand-in's (``tests/webui_stub/modules``), found through this package's path.
``tests/test_stub_matches_webui.py`` compares these signatures with a real Forge checkout too.
"""

import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "webui_stub", "modules"))
