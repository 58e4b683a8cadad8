"""FastComposer in one WebUI generation: checks before sampling, the prompt-path hooks that strip the
markers, and the CFG denoiser callback that swaps in the subject-augmented conditioning.

How it hooks in (one generation; everything is removed in postprocess or when ``p`` is closed):

- The host adapter's prompt hooks (``host.current().fastcomposer_text``: forward hooks on A1111's
  ``cond_stage_model``, a wrapper of the model's ``get_learned_conditioning`` on Forge) hand the session the
  ``texts`` the WebUI encodes; :meth:`FastComposerSession.texts_for_encoder` gives back the ones to encode, markers
  removed, so the model never sees ``img``. ``p.prompt``/``p.all_prompts`` keep them (infotext paste-back
  reproduces the image). Texts the WebUI marks as negative (``SdConditioning.is_negative_prompt``) pass untouched.
  For each text the session computes the token positions of its marked nouns through the host's tokenizer (see
  ``layout.text_layout``).
- :meth:`FastComposerSession.encoded` records, for each row of the conditioning made of those texts, which text (and
  so which positions) it holds, keyed by the row's storage address (the WebUI keeps views of that very tensor in its
  ``ScheduledPromptConditioning`` entries). The WebUI's cond cache is emptied when the session starts and ends, so
  every cond of the generation goes through the hooks and no marker-stripped cond outlives it.
- ``on_cfg_denoiser``: the rows of ``params.text_cond`` are rebuilt in the order the CFG denoiser
  stacks them (each image, each ``AND`` part, the prompt-editing entry active at this call); from the
  switch step on, ``params.text_cond`` is replaced by a copy in which only the marked positions hold
  ``postfuse(text, subject)``. ``params.text_uncond`` is never changed. Both hosts sample with the
  ``text_cond`` the callback leaves (Forge's sampling function compiles its conds from it).
- sd-webui-controlnet (A1111) prepends a mark token (every value +1024 for a cond, -1024 for an uncond) to each cond
  before sampling, as new tensors: such a row is matched by content to the encoder output behind the mark
  (once per row) and its positions shift by one; ControlNet's U-Net forward takes the mark off again.

Subjects are numbered in prompt order across ``AND`` parts: the k-th marker of a part takes image
``offset + k`` (``offset`` = markers in the parts before it). Prompt editing and alternation are
resolved by the WebUI; every variant of a part must mark the same number of subjects.
"""

from __future__ import annotations

import copy
import traceback

import torch

from modules import devices, shared

from lib_freediff.errors import FreeDiffError, ModelFileError, ParamError
from lib_freediff.fastcomposer.conditioning import use_augmented
from lib_freediff.fastcomposer.model import FEATURE
from lib_freediff.fastcomposer.params import FASTCOMPOSER_PARAMS, INFOTEXT_KEY, MAX_IMAGES, image_hash, infotext_value
from lib_freediff.schedule import sampler_step
from lib_freediff.unet_info import context_dim
from lib_freediff.webui import host, runtime
from lib_freediff.webui.fastcomposer.layout import Layout, check_prompts, text_layout
from lib_freediff.webui.fastcomposer.models import (CACHE, check_sd_model, file_hash, has_fastcomposer_unet,
                                                    model_file_message, model_title, resolve_model, unet_of)
from lib_freediff.webui.overrides import values_with_overrides


def _row_key(t: torch.Tensor):
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)


CONTROLNET_MARK = 1024.0  # sd-webui-controlnet's cond/uncond mark: a first token row of +1024 or -1024


def is_controlnet_marked(row: torch.Tensor) -> bool:
    """Whether a ``(T, C)`` cond row starts with sd-webui-controlnet's mark row (every value ±1024)."""
    return row.ndim == 2 and row.shape[0] > 1 and bool(row[0].abs().eq(CONTROLNET_MARK).all())


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


def values_for(p, args) -> dict | None:
    values, _, _ = values_with_overrides(FASTCOMPOSER_PARAMS, p, args)
    if not values["enabled"]:
        return None
    runtime.check_model(FEATURE, p, host.current().family(p.sd_model))
    return values


class FastComposerSession:
    def __init__(self, p, values: dict, model, subjects: torch.Tensor, prompts):
        """``prompts``: the host's prompt hooks (``host.current().fastcomposer_text``), attached here."""
        self.p = p
        self.values = values
        self.alpha = float(values["alpha"])
        self.model = model
        self.subjects = subjects            # (n, D) float32, CPU
        self.n_subjects = subjects.shape[0]
        self.prompts = prompts
        self.layouts: dict[str, Layout] = {}
        self.records: dict[tuple, Layout] = {}
        self._encoded: list[tuple[torch.Tensor, Layout]] = []
        self._other_rows: dict[tuple, tuple] = {}  # rows the encoder did not make: (layout, shift), looked up once
        self._keep: list[torch.Tensor] = []   # tensors whose storage addresses are keys above
        self.in_hires = False
        self.augmented_calls = 0
        self.refused = False
        self._warned = False
        prompts.attach(self)
        clear_cond_caches(p)

    # -- the prompt path ---------------------------------------------------------------------------------

    def layout_of(self, text: str) -> Layout:
        layout = self.layouts.get(text)
        if layout is None:
            layout = self.layouts[text] = text_layout(self.prompts.tokenizer(), text)
        return layout

    def texts_for_encoder(self, texts):
        """``(layouts or None, the texts to encode)`` for texts on their way to the host's text encoder: markers
        removed (the same object when there is nothing to remove); None for texts that are not ours to change
        (negative prompts, anything but a list of strings)."""
        if (not isinstance(texts, (list, tuple)) or getattr(texts, "is_negative_prompt", False)
                or not all(isinstance(t, str) for t in texts)):
            return None, texts
        try:
            layouts = [self.layout_of(t) for t in texts]
        except FreeDiffError as e:  # raised inside the WebUI's conditioning: a 4xx for API clients
            raise runtime.http_error(e) from None
        clean = [layout.clean for layout in layouts]
        return layouts, (texts if clean == list(texts) else _replace_texts(texts, clean))

    def encoded(self, layouts: list, z) -> None:
        """Records the rows of ``z``, the conditioning the host made of the texts of ``layouts``."""
        if not torch.is_tensor(z) or z.ndim != 3 or z.shape[0] != len(layouts):
            return
        self._keep.append(z)
        for i, layout in enumerate(layouts):
            self.records[_row_key(z[i])] = layout
            self._encoded.append((z[i], layout))

    # -- sampling ---------------------------------------------------------------------------------------

    def enter_hires(self) -> None:
        self.in_hires = True

    def _pass_enabled(self, denoiser) -> bool:
        in_hires = self.in_hires or bool(getattr(getattr(denoiser, "p", None), "is_hr_pass", False))
        return not in_hires or self.values["hires"]

    def row_layout(self, row: torch.Tensor):
        """(layout or None, token shift) of one cond row: a row the text encoder made (shift 0), or a copy of one
        behind sd-webui-controlnet's mark row, which it prepends to every cond before sampling (shift 1)."""
        key = _row_key(row)
        layout = self.records.get(key)
        if layout is not None:
            return layout, 0
        found = self._other_rows.get(key)
        if found is None:
            found = (None, 0)
            if is_controlnet_marked(row):
                found = next(((layout, 1) for encoded, layout in self._encoded
                              if encoded.shape == row[1:].shape and encoded.dtype == row.dtype
                              and encoded.device == row.device and torch.equal(encoded, row[1:])), found)
            self._keep.append(row)
            self._other_rows[key] = found
        return found

    def row_layouts(self, denoiser, n_rows: int):
        """(layout or None, subject offset, token shift) for each row of ``text_cond``, in the CFG denoiser's order."""
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
                    layout, shift = self.row_layout(entry.cond) if torch.is_tensor(entry.cond) else (None, 0)
                    rows.append((layout, offset, shift))
                    offset += len(layout.positions) if layout is not None else 0
        elif torch.is_tensor(cond) and cond.ndim == 3:  # a plain (B, T, C) cond
            for r in range(cond.shape[0]):
                layout, shift = self.row_layout(cond[r])
                rows.append((layout, 0, shift))
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
        for layout, offset, shift in rows:
            row = [None] * self.n_subjects
            if layout is not None:
                for k, pos in enumerate(layout.positions):
                    if offset + k < self.n_subjects:
                        row[offset + k] = pos + shift
            out.append(row)
        return out

    def on_cfg_denoiser(self, params) -> None:
        """Swaps in the subject-augmented rows. The WebUI only prints what a CFG callback raises, so a failure
        here refuses the generation through the runtime's gate (it raises at the U-Net call that follows)."""
        if self.refused:
            return
        try:
            self._augment(params)
        except FreeDiffError as e:
            self._refuse(e)
        except Exception as e:  # e.g. out of memory: refuse rather than sample without the subjects
            traceback.print_exc()
            self._refuse(FreeDiffError(f"{FEATURE}: could not fuse the subjects: {type(e).__name__}: {e}", feature=FEATURE))

    def _refuse(self, error: FreeDiffError) -> None:
        self.refused = True
        runtime.refuse(FEATURE, self.p, error)

    def _augment(self, params) -> None:
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
        self.prompts.close()
        clear_cond_caches(self.p)
        self.records.clear()
        self._encoded.clear()
        self._other_rows.clear()
        self._keep.clear()


def clear_cond_caches(p) -> None:
    """Empties the WebUI's cond caches (``cached_c``/``cached_hr_c``, shared by class; ``[params, conds]``, on Forge
    also the encoder's infotext params): conds made while markers are stripped must not be reused by a generation
    without FastComposer, and the other way round."""
    seen = set()
    holders = [p] + list(type(p).__mro__)
    for name in ("cached_c", "cached_hr_c"):
        for holder in holders:
            cache = vars(holder).get(name) if hasattr(holder, "__dict__") else None
            if isinstance(cache, list) and len(cache) >= 2 and id(cache) not in seen:
                seen.add(id(cache))
                cache[:] = [None] * len(cache)


def check_processing(p, values) -> None:
    """Generation features FastComposer cannot follow: another model for the hires pass or a refiner."""
    hr_ckpt = getattr(p, "hr_checkpoint_name", None)
    if getattr(p, "enable_hr", False) and hr_ckpt and hr_ckpt != "Use same checkpoint":
        raise FreeDiffError(f"{FEATURE}: a separate hires fix checkpoint ({hr_ckpt}) is not supported; use 'Use same checkpoint'",
                            feature=FEATURE)
    refiner = getattr(p, "refiner_checkpoint", None)
    switch_at = getattr(p, "refiner_switch_at", None)
    if refiner and refiner != "None" and switch_at is not None and switch_at < 1:
        raise FreeDiffError(f"{FEATURE}: the refiner ({refiner}) is not supported; turn it off", feature=FEATURE)


def prepare(p, values: dict) -> FastComposerSession:
    """All checks, the model and the subject embeddings; raises before any sampling."""
    images = list(values["images"])
    if not images:
        raise ParamError(FEATURE, "images", f"give 1 to {MAX_IMAGES} subject images (one per marked noun)")
    name, path = resolve_model(values["model"])
    sd_model = shared.sd_model
    check_sd_model(sd_model)
    prompts = host.current().fastcomposer_text(sd_model)  # refuses a text encoder it cannot follow
    check_processing(p, values)
    check_prompts(p, len(images), values["hires"])
    try:
        model = CACHE.get(path)
        width = context_dim(unet_of(sd_model))
        if width is not None and width != model.embed_dim:
            raise ParamError(FEATURE, "model", f"{name}: its post-fuse width is {model.embed_dim} but the loaded "
                                               f"checkpoint's text width is {width}")
        subjects = CACHE.subject_embeddings(path, images, device=devices.device, dtype=devices.dtype)
        digest = file_hash(path, name)
    except ModelFileError as e:
        raise ParamError(FEATURE, "model", model_file_message(e, name, path)) from None
    if not has_fastcomposer_unet(sd_model, path):
        warning = (f"{FEATURE}: the loaded model ({model_title(sd_model)}) is not FastComposer's U-Net; the subjects "
                   "will not look right (panel: 'Create WebUI checkpoint', then load that checkpoint)")
        print(f"[sd-webui-freediff] {warning}")
        comments = getattr(p, "comments", None)
        if isinstance(comments, dict):
            comments[warning] = 1
    values = {**values, "model": name}
    p.extra_generation_params[INFOTEXT_KEY] = infotext_value(values, digest, [image_hash(im) for im in images])
    return FastComposerSession(p, values, model, subjects, prompts)  # attaches the hooks: last, once all checks passed


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
        raise FreeDiffError(f"{FEATURE}: could not prepare the subjects: {type(e).__name__}: {e}", feature=FEATURE) from e
    runtime.start(FEATURE, p, session)


def before_hr(p) -> None:
    runtime.call(FEATURE, "enter_hires")


def postprocess(p) -> None:
    runtime.end(FEATURE)
