// sd-webui-freediff: hover help for the panels' controls, through the WebUI's `titles` table (hints.js),
// which the WebUI shows as tooltips on elements whose text matches a key.
(function () {
    if (typeof titles === "undefined") {
        return;
    }
    Object.assign(titles, {
        "FreeU": "FreeU re-weights the U-Net's backbone and skip features while sampling; no training, no extra time.",
        "b1 (backbone, stage 1)": "Backbone factor of the deepest decoder stage (1280 channels on SD). Higher: stronger structure, smoother texture.",
        "b2 (backbone, stage 2)": "Backbone factor of the second decoder stage (640 channels on SD).",
        "s1 (skip, stage 1)": "Low-frequency factor of the skip features of the deepest decoder stage. Lower: less over-smoothing of detail.",
        "s2 (skip, stage 2)": "Low-frequency factor of the skip features of the second decoder stage.",
        "Start at step fraction": "FreeU acts on sampler steps i with start×steps ≤ i < end×steps (both calls of Heun/DPM2 steps count as one step).",
        "End at step fraction": "FreeU acts on sampler steps i with start×steps ≤ i < end×steps.",
        "Apply in hires fix pass": "Also apply FreeU in the hires fix pass; its steps are counted on their own.",
        "Skip filter cutoff (half-width)": "Half-width of the centred low-frequency box scaled by s1/s2; 1 is the FreeU reference.",
        "Saved presets": "Presets are stored as JSON files in the WebUI's data folder (freediff/presets) and over HTTP at /freediff/v1/presets.",
        "FastComposer": "FastComposer puts the people of 1–4 reference images into the picture: write img after each subject's noun (a man img and a woman img) and give one image per marked noun, in order.",
        "FastComposer model": "FastComposer's release file (pytorch_model.bin or a .safetensors copy) in models/fastcomposer/; 🔄 rescans the folder.",
        "Alpha (α)": "Share of the sampling steps, at the end, that see the subjects: the first ⌊(1−α)·steps⌋ steps use the text alone (layout), the rest the subject-augmented text (identity). Higher: more likeness, less prompt editability.",
        "Subject conditioning in hires fix pass": "Also use the subjects in the hires fix pass, with the same α over that pass's own steps; off: the hires pass sees the text alone.",
        "Check loaded model": "Says whether the loaded Stable Diffusion checkpoint has FastComposer's fine-tuned U-Net (needed for good likeness).",
        "Create WebUI checkpoint": "Writes FastComposer's U-Net, text encoder and VAE as an SD1.5 checkpoint in models/Stable-diffusion/; then select it in the checkpoint dropdown.",
        "Free memory": "Drops the loaded FastComposer image encoder and the cached subject embeddings; they load again on the next use.",
        "Any-Size Diffusion": "Any size, any ratio: txt2img starts at the aspect-ratio bucket nearest the target's ratio at the model's native size, then the hires fix renders the exact target with tiles whose grid shifts every step (FSTD); img2img renders the target with those tiles.",
        "Final width": "Width of the delivered image in pixels, any whole number from 64. The WebUI's own width slider is not used while this panel is on.",
        "Final height": "Height of the delivered image in pixels, any whole number from 64. The WebUI's own height slider is not used while this panel is on.",
        "Aspect-ratio buckets": "native: the paper's 9 ratios at the loaded model's native area (SD1.x 512², SD2.x 768², SDXL 1024²). paper: the paper's own sizes, up to 2.5× that (for models fine-tuned on them, ARAD). sdxl: SDXL's training buckets. Or your own list: 640x448, 448x640, …",
        "Tiling mode": "implicit: FSTD, non-overlapping tiles whose grid shifts by a random offset every step (no seams, at the cost of a fixed grid). explicit: overlapping tiles averaged (2–3× the work). none: a fixed grid (seams; for comparison).",
        "Tile size (px)": "The largest tile side in pixels; the tiles actually used are fitted to the image, each at most this size.",
        "Random offset range (px)": "Implicit mode: every step the tile grid shifts by an offset drawn from [0, range), seeded by the image seed and the step.",
        "Reset offset every N steps": "Steps 0, N, 2N, … use the unshifted grid (the paper's code resets every 4th step); 0 = never, which leaves fewer seams.",
        "Overlap (px, explicit mode)": "Explicit mode: how far neighbouring tiles overlap; smaller than the tile.",
        "Tiles per U-Net call": "0 = auto: 1 on the CPU, 4 on a GPU. More tiles per call: fewer, larger U-Net calls, more memory; the image stays the same.",
        "Second-pass upscaler": "How the first-pass image is enlarged to the render size, as in the hires fix: a Latent mode or an image upscaler (txt2img).",
        "Second-pass denoising strength": "How much the tiled second pass may change the enlarged first-pass image: 0 keeps it, 1 ignores it (txt2img; img2img uses its own).",
        "Second-pass steps": "Sampling steps of the tiled second pass; 0 = as many as the first pass (txt2img; img2img uses its own).",
        "VAE in tiles": "auto: decode and encode in tiles above the size set in Settings → FreeDiff (default 1536²); on / off: always / never. The tiles show no seams or colour shifts."
    });
})();
