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
        "Free memory": "Drops the loaded FastComposer image encoder and the cached subject embeddings; they load again on the next use."
    });
})();
