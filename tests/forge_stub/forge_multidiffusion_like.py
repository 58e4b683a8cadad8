"""A stand-in for Forge's "MultiDiffusion Integrated" (``extensions-builtin/sd_forge_multidiffusion``): its title and
arguments (enabled, method, tile width, tile height, overlap, tile batch, px), and its tiler put on a clone of the
pass's U-Net patcher as the function wrapper; here the wrapper calls the U-Net on the whole latent."""

import gradio as gr

from modules import scripts


class MultiDiffusionForForge(scripts.Script):
    sorting_priority = 16

    def title(self):
        return "MultiDiffusion Integrated"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Checkbox(False), gr.Radio(["MultiDiffusion", "Mixture of Diffusers"], value="MultiDiffusion"),
                gr.Slider(16, 8192, 768), gr.Slider(16, 8192, 768), gr.Slider(0, 2048, 64), gr.Slider(1, 8192, 4)]

    def process_before_every_sampling(self, p, enabled, method, tile_width, tile_height, tile_overlap, tile_batch_size, **kwargs):
        if not enabled:
            return
        unet = p.sd_model.forge_objects.unet.clone()
        unet.set_model_unet_function_wrapper(lambda apply_model, args: apply_model(args["input"], args["timestep"], **args["c"]))
        unet.model_options["tiled_diffusion"] = True
        p.sd_model.forge_objects.unet = unet
