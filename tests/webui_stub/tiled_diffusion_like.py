"""A stand-in for Tiled Diffusion (pkuliyi2015/multidiffusion-upscaler-for-automatic1111): its title and its first
script argument, 'enabled' (the tiling itself is not needed: Any-Size Diffusion refuses to run beside it)."""

import gradio as gr

from modules import scripts


class TiledDiffusionScript(scripts.Script):
    def title(self):
        return "Tiled Diffusion"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Checkbox(False), gr.Dropdown(["MultiDiffusion", "Mixture of Diffusers"], value="MultiDiffusion")]
