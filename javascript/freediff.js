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
        "Saved presets": "Presets are stored as JSON files in the WebUI's data folder (freediff/presets) and over HTTP at /freediff/v1/presets."
    });
})();
