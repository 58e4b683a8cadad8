"""FastComposer in a WebUI generation: parse args, check the model and prompt, strip the subject markers
where the text reaches the text encoder, and swap in the subject-augmented conditioning from the
delayed-switch step on.

How it hooks in (one generation; everything is removed in postprocess or when ``p`` is closed):

- A forward pre-hook on ``shared.sd_model.cond_stage_model`` (the WebUI's FrozenCLIPEmbedderWithCustomWords)
  rewrites the ``texts`` it is called with: markers removed, so the model never sees ``img``.
  ``p.prompt``/``p.all_prompts`` keep them (infotext paste-back reproduces the image). Texts the WebUI
  marks as negative (``SdConditioning.is_negative_prompt``) pass untouched. For each text the pre-hook
  computes the token positions of its marked nouns (last sub-token) with the WebUI's own tokenizer,
  emphasis mode, comma backtrack, chunk length and textual-inversion database, and cross-checks them
  against the WebUI's ``tokenize_line``.
- A forward hook records, for each row of the text encoder's output, which text (and so which
  positions) it holds, keyed by the row's storage address (the WebUI keeps views of that very tensor in
  its ``ScheduledPromptConditioning`` entries). The WebUI's cond cache is emptied when the session starts
  and ends, so every cond of the generation goes through the hook and no marker-stripped cond outlives it.
- ``on_cfg_denoiser``: the rows of ``params.text_cond`` are rebuilt in the order the CFG denoiser
  stacks them (each image, each ``AND`` part, the prompt-editing entry active at this call); from the
  switch step on, ``params.text_cond`` is replaced by a copy in which only the marked positions hold
  ``postfuse(text, subject)``. ``params.text_uncond`` is never changed.

Subjects are numbered in prompt order across ``AND`` parts: the k-th marker of a part takes image
``offset + k`` (``offset`` = markers in the parts before it). Prompt editing and alternation are
resolved by the WebUI; every variant of a part must mark the same number of subjects.
"""

from __future__ import annotations

import copy
import hashlib
import os
import traceback
from typing import Any, Mapping, NamedTuple, Optional

import torch
from PIL import Image

from modules import devices, paths, shared

from lib_freediff.errors import FreeDiffError, ModelFileError, ParamError
from lib_freediff.fastcomposer.conditioning import find_markers, token_positions, use_augmented, check_subject_count
from lib_freediff.fastcomposer.convert import is_fastcomposer_unet
from lib_freediff.fastcomposer.loader import FastComposerCache, model_hash
from lib_freediff.fastcomposer.model import FEATURE
from lib_freediff.fastcomposer.preprocess import blank_background, to_pil
from lib_freediff.params import Param, ParamSet
from lib_freediff.schedule import sampler_step
from lib_freediff.unet_info import context_dim, model_family
from lib_freediff.webui import features, runtime
from lib_freediff.webui.overrides import values_with_overrides

MAX_IMAGES = 4
MODELS_SUBDIR = "fastcomposer"
MODEL_EXTENSIONS = (".bin", ".safetensors")
INFOTEXT_KEY = "FastComposer"


def _check_images(value: Any) -> list:
    """1–4 subject images (UI: PIL images, empty slots None; API: base64 PNG/JPEG strings or data URLs)."""
    if value is None:
        return []
    if isinstance(value, (str, Image.Image)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of up to {MAX_IMAGES} base64 PNG/JPEG images, got {type(value).__name__}")
    present = [(i, v) for i, v in enumerate(value) if v is not None]
    if len(present) > MAX_IMAGES:
        raise ValueError(f"at most {MAX_IMAGES} subject images, got {len(present)}")
    return [to_pil(v, i) for i, v in present]


FASTCOMPOSER_PARAMS = ParamSet(
    FEATURE,
    [
        Param("enabled", "bool", False, "Enable FastComposer"),
        Param("model", "choice", "", "FastComposer model", choices=(), open_choices=True,
              info="a file in models/fastcomposer (.bin or .safetensors); empty: the first one"),
        Param("images", "json", (), "Subject images", infotext=False, check=_check_images),
        Param("alpha", "float", 0.7, "Alpha (α)", 0.0, 1.0, 0.01,
              info="share of the sampling steps, at the end, that see the subjects: the first ⌊(1−α)·steps⌋ steps are text-only"),
        Param("hires", "bool", True, "Subject conditioning in hires fix pass"),
    ],
    infotext_key=INFOTEXT_KEY,
)

# presets hold the settings, never the subject images nor the model file
PRESET_PARAMS = ParamSet(FEATURE, [FASTCOMPOSER_PARAMS.by_name[n] for n in ("enabled", "alpha", "hires")],
                         infotext_key=INFOTEXT_KEY)
BUILTIN_PRESETS = {
    "Balanced (alpha 0.7)": {"enabled": True, "alpha": 0.7},
    "Identity (alpha 0.8)": {"enabled": True, "alpha": 0.8},
    "Editable (alpha 0.6)": {"enabled": True, "alpha": 0.6},
}

PRESET_FEATURE = features.Feature(PRESET_PARAMS, BUILTIN_PRESETS)


class _FastComposerFeature(features.Feature):
    """The API contract is the full parameter set; its preset store is the settings-only one."""

    def store(self):
        return PRESET_FEATURE.store()


FEATURE_SPEC = features.register(_FastComposerFeature(FASTCOMPOSER_PARAMS, BUILTIN_PRESETS))

CACHE = FastComposerCache()


# ----------------------------------------------------------------------------------------------------
# model files
# ----------------------------------------------------------------------------------------------------

def models_dir() -> str:
    return os.path.join(paths.models_path, MODELS_SUBDIR)


def list_models() -> list[str]:
    """Model files under models/fastcomposer (relative names with '/'), sorted."""
    root = models_dir()
    found = []
    if os.path.isdir(root):
        for folder, _dirs, files in os.walk(root):
            for f in files:
                if f.lower().endswith(MODEL_EXTENSIONS) and not f.startswith("."):
                    found.append(os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/"))
    return sorted(found, key=str.lower)


def resolve_model(name: str) -> tuple[str, str]:
    """(name, absolute path) of a model file; '' means the first one. Only files of the folder count."""
    names = list_models()
    if not names:
        raise ParamError(FEATURE, "model", f"no FastComposer model in {models_dir()}: put the release's "
                                           "pytorch_model.bin (or a .safetensors copy) there")
    name = (name or "").strip()
    if not name:
        name = names[0]
    if name not in names:
        matches = [n for n in names if os.path.basename(n) == name or os.path.splitext(os.path.basename(n))[0] == name]
        if len(matches) != 1:
            raise ParamError(FEATURE, "model", f"{name!r} is not a model in {models_dir()}; available: {', '.join(names)}")
        name = matches[0]
    return name, os.path.join(models_dir(), *name.split("/"))


def default_model_choice() -> str:
    names = list_models()
    return names[0] if names else ""


def checkpoints_dir() -> str:
    return getattr(shared.cmd_opts, "ckpt_dir", None) or os.path.join(paths.models_path, "Stable-diffusion")


# ----------------------------------------------------------------------------------------------------
# checks of the loaded WebUI model
# ----------------------------------------------------------------------------------------------------

def _unet(sd_model):
    return getattr(getattr(sd_model, "model", None), "diffusion_model", None)


def loaded_family(sd_model) -> Optional[str]:
    for attr, family in (("is_sdxl", "SDXL"), ("is_sd3", "SD3"), ("is_sd2", "SD2")):
        if getattr(sd_model, attr, False):
            return family
    unet = _unet(sd_model)
    fam = model_family(unet) if unet is not None else None
    return {"sdxl": "SDXL", "sd2": "SD2"}.get(fam or "", "SD1")


def _model_title(sd_model) -> str:
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return getattr(info, "short_title", None) or getattr(info, "title", None) or "the loaded model"


def check_sd_model(sd_model) -> None:
    """Refuses anything but an SD1.x model with the WebUI's CLIP text conditioning."""
    if sd_model is None:
        raise FreeDiffError(f"{FEATURE}: no Stable Diffusion model is loaded")
    family = loaded_family(sd_model)
    if family != "SD1":
        raise FreeDiffError(f"{FEATURE} needs an SD1.5 model; {_model_title(sd_model)} is {family}. Load the "
                            "FastComposer checkpoint (panel: 'Create WebUI checkpoint') or another SD1.5 model.")
    cond = getattr(sd_model, "cond_stage_model", None)
    if not all(hasattr(cond, a) for a in ("tokenize", "tokenize_line", "register_forward_pre_hook")):
        raise FreeDiffError(f"{FEATURE} needs the WebUI's CLIP text conditioning (FrozenCLIPEmbedderWithCustomWords); "
                            f"this model's text encoder is {type(cond).__name__}")
    if getattr(shared.opts, "use_old_emphasis_implementation", False):
        raise FreeDiffError(f"{FEATURE} does not work with the setting 'Use old emphasis implementation'; turn it off")


def check_processing(p, values) -> None:
    """Generation features FastComposer cannot follow: another model for the hires pass or a refiner."""
    hr_ckpt = getattr(p, "hr_checkpoint_name", None)
    if getattr(p, "enable_hr", False) and hr_ckpt and hr_ckpt != "Use same checkpoint":
        raise FreeDiffError(f"{FEATURE}: a separate hires fix checkpoint ({hr_ckpt}) is not supported; use 'Use same checkpoint'")
    refiner = getattr(p, "refiner_checkpoint", None)
    switch_at = getattr(p, "refiner_switch_at", None)
    if refiner and refiner != "None" and switch_at is not None and switch_at < 1:
        raise FreeDiffError(f"{FEATURE}: the refiner ({refiner}) is not supported; turn it off")


def model_status(name: str | None = None) -> str:
    """One line of Markdown for the panel: is the loaded WebUI model FastComposer's U-Net?"""
    sd_model = shared.sd_model
    try:
        mname, path = resolve_model(name or "")
    except ParamError as e:
        return f"⚠️ {e.args[0].split(': ', 2)[-1]}"
    if sd_model is None:
        return "No Stable Diffusion model is loaded."
    family = loaded_family(sd_model)
    if family != "SD1":
        return f"⚠️ The loaded model ({_model_title(sd_model)}) is {family}: FastComposer needs SD1.5, generation will be refused."
    try:
        ok = is_fastcomposer_unet(_unet(sd_model), path)
    except FreeDiffError as e:
        return f"⚠️ {e}"
    if ok:
        return f"✅ The loaded WebUI model ({_model_title(sd_model)}) has FastComposer's U-Net ({mname})."
    return (f"⚠️ The loaded WebUI model ({_model_title(sd_model)}) is **not** FastComposer's U-Net: subjects will "
            f"not look like the images. Click **Create WebUI checkpoint** and select "
            f"`{os.path.splitext(_checkpoint_name(mname))[0]}` in the Stable Diffusion checkpoint dropdown.")


def _checkpoint_name(model_name: str) -> str:
    from lib_freediff.fastcomposer.__main__ import checkpoint_name_for

    return checkpoint_name_for(model_name)


def convert_model(name: str | None = None) -> str:
    """Writes the WebUI checkpoint of a FastComposer file into models/Stable-diffusion (the panel's button)."""
    from lib_freediff.fastcomposer.convert import write_webui_checkpoint

    try:
        mname, path = resolve_model(name or "")
        out = os.path.join(checkpoints_dir(), _checkpoint_name(mname))
        if os.path.exists(out):
            return (f"`{out}` exists already: select `{os.path.splitext(os.path.basename(out))[0]}` in the Stable "
                    "Diffusion checkpoint dropdown (delete the file to write it again).")
        write_webui_checkpoint(path, out)
    except FreeDiffError as e:
        return f"**Error:** {e}"
    try:  # let the WebUI's checkpoint list see the new file
        from modules import sd_models

        sd_models.list_models()
    except Exception:
        pass
    size = os.path.getsize(out) / 2 ** 30
    return (f"Wrote `{out}` ({size:.2f} GiB). Select `{os.path.splitext(os.path.basename(out))[0]}` in the Stable "
            "Diffusion checkpoint dropdown (🔄 refreshes the list).")


def free_memory() -> str:
    CACHE.unload()
    devices.torch_gc()
    return "Freed the FastComposer model and its cached subject embeddings (loaded again on the next use)."


def collect_images(*slots) -> list:
    """The panel's four image slots → the ``images`` argument (empty slots skipped)."""
    return [im for im in slots if im is not None]


# ----------------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------------

def encoded_parts(prompt: str, steps: int) -> list[tuple[str, list[str]]]:
    """``[(AND part, [its prompt-editing variants])]`` as the WebUI will encode them (its prompt_parser)."""
    try:
        from modules import prompt_parser
    except ImportError:
        return [(prompt, [prompt])]
    _indexes, flat, _ = prompt_parser.get_multicond_prompt_list([prompt])
    parts = [flat[i] for i, _w in _indexes[0]]
    out = []
    for part in parts:
        schedule = prompt_parser.get_learned_conditioning_prompt_schedules([part], max(1, int(steps)))[0]
        out.append((part, [text for _end, text in schedule]))
    return out


def subject_count(prompt: str, steps: int) -> int:
    """Marked subjects of a prompt: summed over AND parts; every variant of a part must agree."""
    total = 0
    for part, variants in encoded_parts(prompt, steps):
        counts = sorted({len(find_markers(v).spans) for v in variants})
        if len(counts) > 1:
            raise ParamError(FEATURE, "prompt", f"the prompt editing in {part!r} changes the number of marked subjects "
                                                f"({' vs '.join(map(str, counts))}); every variant must mark the same subjects")
        total += counts[0]
    return total


def check_prompts(p, n_images: int, hires: bool) -> None:
    checks = [(getattr(p, "all_prompts", None) or [p.prompt], p.steps)]
    if hires and getattr(p, "enable_hr", False):
        hr_steps = getattr(p, "hr_second_pass_steps", 0) or p.steps
        checks.append((getattr(p, "all_hr_prompts", None) or [], hr_steps))
    for prompts, steps in checks:
        for prompt in dict.fromkeys(prompts):
            check_subject_count(subject_count(prompt, steps), n_images)


class Layout(NamedTuple):
    clean: str
    positions: list      # conditioning index of each marked noun (last sub-token), in marker order
    nouns: list


def _find_embedding(cond_model):
    db = getattr(getattr(cond_model, "hijack", None), "embedding_db", None)
    if db is None or not hasattr(db, "find_embedding_at_position"):
        return None

    def find(tokens, position):
        embedding, length = db.find_embedding_at_position(tokens, position)
        if embedding is None:
            return None
        return int(embedding.vectors), int(length)

    return find


def text_layout(cond_model, text: str) -> Layout:
    """Marker-free text and the positions of its marked nouns in ``cond_model``'s output for it."""
    markers = find_markers(text)
    if not markers.spans:
        return Layout(text, [], [])
    clean = markers.clean_prompt

    def tokenize(t):
        return list(cond_model.tokenize([t])[0])

    chunk_length = int(getattr(cond_model, "chunk_length", 75))
    positions, n_chunks = token_positions(
        clean, markers.spans, tokenize,
        emphasis=getattr(shared.opts, "emphasis", "Original") != "None",
        comma_padding_backtrack=int(getattr(shared.opts, "comma_padding_backtrack", 20)),
        comma_token=getattr(cond_model, "comma_token", None), chunk_length=chunk_length,
        find_embedding=_find_embedding(cond_model), return_chunks=True)
    # the WebUI's own tokenizer decides: the chunks and the token at each position must agree
    chunks, _count = cond_model.tokenize_line(clean)
    stride = chunk_length + 2
    if len(chunks) != n_chunks:
        raise FreeDiffError(f"{FEATURE}: the prompt {clean!r} splits into {len(chunks)} chunks in the WebUI but {n_chunks} "
                            "in FastComposer's layout; please report this prompt")
    for noun, pos in zip(markers.nouns, positions):
        c, t = divmod(pos, stride)
        token = chunks[c].tokens[t]
        ids = tokenize(noun)
        if token != 0 and (not ids or token != ids[-1]):  # 0: a textual-inversion vector
            raise FreeDiffError(f"{FEATURE}: could not locate the marked word {noun!r} in the WebUI's tokens of "
                                f"{clean!r}; please report this prompt")
    return Layout(clean, list(positions), markers.nouns)


def _row_key(t: torch.Tensor):
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)


def _scheduled_entry(schedules, step: int):
    """The prompt-editing entry the WebUI's reconstruct_cond_batch picks at denoiser call ``step``."""
    for entry in schedules:
        if step <= entry.end_at_step:
            return entry
    return schedules[0]


def _replace_texts(texts, clean):
    if isinstance(texts, list):
        new = copy.copy(texts)  # keeps SdConditioning's width, height, is_negative_prompt
        new[:] = clean
        return new
    return type(texts)(clean)


def file_hash(path: str, name: str) -> str:
    """sha256 of the model file, 10 digits: through the WebUI's hash cache (cache.json, kept across
    restarts) when there is one, else computed once per process; "none" under ``--no-hashing``."""
    try:
        from modules import hashes
    except ImportError:
        return model_hash(path)
    digest = hashes.sha256(path, f"{MODELS_SUBDIR}/{name}")
    return digest[:10] if digest else "none"


def image_hash(image: Image.Image) -> str:
    """sha256 of the image's pixels as the encoder sees them (RGB, transparent parts black), 10 digits."""
    rgb = blank_background(image)
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()[:10]


# ----------------------------------------------------------------------------------------------------
# the session
# ----------------------------------------------------------------------------------------------------

def values_for(p, args) -> dict | None:
    values, _, _ = values_with_overrides(FASTCOMPOSER_PARAMS, p, args)
    if not values["enabled"]:
        return None
    return values


class FastComposerSession:
    def __init__(self, p, values: dict, model, subjects: torch.Tensor):
        self.p = p
        self.values = values
        self.alpha = float(values["alpha"])
        self.model = model
        self.subjects = subjects            # (n, D) float32, CPU
        self.n_subjects = subjects.shape[0]
        self.cond_model = shared.sd_model.cond_stage_model
        self.layouts: dict[str, Layout] = {}
        self.records: dict[tuple, Layout] = {}
        self._keep: list[torch.Tensor] = []   # encoder outputs whose storage addresses are record keys
        self._pending: list = []
        self.in_hires = False
        self.augmented_calls = 0
        self._warned = False
        self._handles = [self.cond_model.register_forward_pre_hook(self._before_encode),
                         self.cond_model.register_forward_hook(self._after_encode)]
        clear_cond_caches(p)

    # -- text encoder hooks ----------------------------------------------------------------------------

    def layout_of(self, text: str) -> Layout:
        layout = self.layouts.get(text)
        if layout is None:
            layout = self.layouts[text] = text_layout(self.cond_model, text)
        return layout

    def _before_encode(self, module, args):
        texts = args[0] if args else None
        if (not isinstance(texts, (list, tuple)) or getattr(texts, "is_negative_prompt", False)
                or not all(isinstance(t, str) for t in texts)):
            self._pending.append(None)
            return None
        layouts = [self.layout_of(t) for t in texts]
        self._pending.append(layouts)
        clean = [layout.clean for layout in layouts]
        if clean == list(texts):
            return None
        return (_replace_texts(texts, clean), *args[1:])

    def _after_encode(self, module, args, output):
        layouts = self._pending.pop() if self._pending else None
        if layouts is None:
            return None
        z = output[0] if isinstance(output, (tuple, list)) else output
        if not torch.is_tensor(z) or z.ndim != 3 or z.shape[0] != len(layouts):
            return None
        self._keep.append(z)
        for i, layout in enumerate(layouts):
            self.records[_row_key(z[i])] = layout
        return None

    # -- sampling ---------------------------------------------------------------------------------------

    def enter_hires(self) -> None:
        self.in_hires = True

    def _pass_enabled(self, denoiser) -> bool:
        in_hires = self.in_hires or bool(getattr(getattr(denoiser, "p", None), "is_hr_pass", False))
        return not in_hires or self.values["hires"]

    def row_layouts(self, denoiser, n_rows: int):
        """(layout or None, subject offset) for each row of ``text_cond``, in the CFG denoiser's order."""
        cond = (getattr(getattr(denoiser, "sampler", None), "sampler_extra_args", None) or {}).get("cond")
        if cond is None and hasattr(getattr(denoiser, "p", None), "get_conds"):
            cond = denoiser.p.get_conds()[0]
        rows = []
        batch = getattr(cond, "batch", None)
        if batch is not None:  # MulticondLearnedConditioning: images × AND parts, prompt editing per call
            for parts in batch:
                offset = 0
                for part in parts:
                    entry = _scheduled_entry(part.schedules, denoiser.step)
                    layout = self.records.get(_row_key(entry.cond)) if torch.is_tensor(entry.cond) else None
                    rows.append((layout, offset))
                    offset += len(layout.positions) if layout is not None else 0
        elif torch.is_tensor(cond) and cond.ndim == 3:  # a plain (B, T, C) cond
            rows = [(self.records.get(_row_key(cond[r])), 0) for r in range(cond.shape[0])]
        else:
            return None
        if len(rows) != n_rows:
            if not self._warned:
                print(f"[sd-webui-freediff] {FEATURE}: cannot match {n_rows} conditioning rows to the prompts "
                      f"({len(rows)} expected); subject conditioning skipped")
                self._warned = True
            return None
        return rows

    def positions_for(self, rows) -> list:
        out = []
        for layout, offset in rows:
            row = [None] * self.n_subjects
            if layout is not None:
                for k, pos in enumerate(layout.positions):
                    if offset + k < self.n_subjects:
                        row[offset + k] = pos
            out.append(row)
        return out

    def on_cfg_denoiser(self, params) -> None:
        denoiser = params.denoiser
        if denoiser is None or not self._pass_enabled(denoiser):
            return
        steps = denoiser.steps or params.total_sampling_steps
        step = sampler_step(denoiser.step, steps, denoiser.total_steps)
        if not use_augmented(step, self.alpha, steps):
            return
        text_cond = params.text_cond
        if not torch.is_tensor(text_cond) or text_cond.ndim != 3:
            return
        rows = self.row_layouts(denoiser, text_cond.shape[0])
        if rows is None:
            return
        positions = self.positions_for(rows)
        if not any(pos is not None for row in positions for pos in row):
            return
        params.text_cond = self.model.fuse(text_cond, self.subjects, positions)
        self.augmented_calls += 1

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        clear_cond_caches(self.p)
        self.records.clear()
        self._keep.clear()
        self._pending.clear()


def clear_cond_caches(p) -> None:
    """Empties the WebUI's cond caches (``cached_c``/``cached_hr_c``, shared by class): conds made while
    markers are stripped must not be reused by a generation without FastComposer, and the other way round."""
    seen = set()
    holders = [p] + list(type(p).__mro__)
    for name in ("cached_c", "cached_hr_c"):
        for holder in holders:
            cache = vars(holder).get(name) if hasattr(holder, "__dict__") else None
            if isinstance(cache, list) and len(cache) == 2 and id(cache) not in seen:
                seen.add(id(cache))
                cache[0] = None
                cache[1] = None


def prepare(p, values: dict) -> FastComposerSession:
    """All checks, the model and the subject embeddings; raises before any sampling."""
    images = list(values["images"])
    if not images:
        raise ParamError(FEATURE, "images", f"give 1 to {MAX_IMAGES} subject images (one per marked noun)")
    name, path = resolve_model(values["model"])
    sd_model = shared.sd_model
    check_sd_model(sd_model)
    check_processing(p, values)
    check_prompts(p, len(images), values["hires"])
    try:
        model = CACHE.get(path)
        width = context_dim(_unet(sd_model))
        if width is not None and width != model.embed_dim:
            raise ParamError(FEATURE, "model", f"{name}: its post-fuse width is {model.embed_dim} but the loaded "
                                               f"checkpoint's text width is {width}")
        subjects = CACHE.subject_embeddings(path, images, device=devices.device, dtype=devices.dtype)
        digest = file_hash(path, name)
    except ModelFileError as e:
        raise ParamError(FEATURE, "model", str(e)) from None
    try:
        has_fastcomposer_unet = is_fastcomposer_unet(_unet(sd_model), path)
    except FreeDiffError:  # e.g. a file that holds only the image encoder and post-fuse module
        has_fastcomposer_unet = False
    if not has_fastcomposer_unet:
        warning = (f"{FEATURE}: the loaded model ({_model_title(sd_model)}) is not FastComposer's U-Net; the subjects "
                   "will not look right (panel: 'Create WebUI checkpoint', then load that checkpoint)")
        print(f"[sd-webui-freediff] {warning}")
        comments = getattr(p, "comments", None)
        if isinstance(comments, dict):
            comments[warning] = 1
    values = {**values, "model": name}
    p.extra_generation_params[INFOTEXT_KEY] = infotext_value(values, digest, [image_hash(im) for im in images])
    return FastComposerSession(p, values, model, subjects)  # attaches the hooks: last, once all checks passed


def infotext_value(values: Mapping[str, Any], digest: str, image_hashes: list[str]) -> str:
    """``model=… alpha=…`` (+ ``hires=false``) ``subjects=n model_hash=… image_hashes=h1+h2`` (never the images)."""
    base = FASTCOMPOSER_PARAMS.format_infotext(values, always=("model", "alpha"))
    return f"{base} subjects={len(image_hashes)} model_hash={digest} image_hashes={'+'.join(image_hashes)}"


def process(p, args) -> None:
    values = values_for(p, args)
    if values is None:
        return
    try:
        session = prepare(p, values)
    except FreeDiffError:
        raise
    except Exception as e:  # e.g. out of memory while encoding: refuse rather than sample with the markers
        traceback.print_exc()
        raise FreeDiffError(f"{FEATURE}: could not prepare the subjects: {type(e).__name__}: {e}") from e
    runtime.start(FEATURE, p, session)


def before_hr(p) -> None:
    runtime.call(FEATURE, "enter_hires")


def postprocess(p) -> None:
    runtime.end(FEATURE)
