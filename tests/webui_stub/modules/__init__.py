"""A small stand-in for the AUTOMATIC1111 WebUI's ``modules`` package (v1.10.1), for tests only.

It mirrors the signatures and the call order of the real modules that sd-webui-freediff touches
(scripts lifecycle, script_callbacks, CFG denoiser, k-diffusion sampler, hires fix, API script args),
with the real model classes (ldm UNetModel, AutoencoderKL, k-diffusion samplers) underneath.
Left out on purpose: prompt scheduling, extra networks, refiner, face restore, saving images.
``tests/test_stub_matches_webui.py`` compares its signatures with a real WebUI checkout.
"""
