"""FastComposer (Xiao et al., 2023): tuning-free multi-subject generation, as plain torch code.

- ``model``: image encoder (CLIP ViT-L/14) + post-fuse MLP; ``FastComposerModel.encode_subjects/fuse``.
- ``loader``: reading the release checkpoint (``.bin`` with weights_only, or ``.safetensors``), the
  ``FastComposerCache`` the WebUI layer keeps, ``convert_bin_to_safetensors``, ``model_hash``.
- ``convert``: the release's SD1.5 parts → a WebUI (ldm) checkpoint; ``is_fastcomposer_unet``.
- ``conditioning``: the ``img`` marker syntax, token positions in the WebUI's 77-token chunk layout,
  delayed subject conditioning.
- ``preprocess``: reference-image preprocessing and base64 decoding.
- ``params``: the feature's parameter set (API fields), presets and infotext value.

Nothing here imports the WebUI or diffusers.
"""

from .conditioning import (MARKER, Markers, SubjectLayout, check_subject_count, count_markers,
                           delayed_switch_step, find_markers, parse_attention_with_offsets, strip_markers,
                           subject_positions, token_positions, use_augmented)
from .convert import (convert_text_state_dict, convert_unet_state_dict, convert_vae_state_dict,
                      is_fastcomposer_unet, unet_fingerprint, write_webui_checkpoint)
from .loader import (CheckpointReader, FastComposerCache, FastComposerManager, convert_bin_to_safetensors,
                     infer_vision_config, load_fastcomposer, model_hash)
from .model import FastComposerModel, MLP, PostfuseModule
from .preprocess import decode_image_b64, preprocess_image, to_pil

__all__ = [
    "MARKER", "Markers", "SubjectLayout", "check_subject_count", "count_markers", "delayed_switch_step",
    "find_markers", "parse_attention_with_offsets", "strip_markers", "subject_positions", "token_positions",
    "use_augmented", "convert_text_state_dict", "convert_unet_state_dict", "convert_vae_state_dict",
    "is_fastcomposer_unet", "unet_fingerprint", "write_webui_checkpoint", "CheckpointReader",
    "FastComposerCache", "FastComposerManager", "convert_bin_to_safetensors", "infer_vision_config",
    "load_fastcomposer", "model_hash", "FastComposerModel", "MLP", "PostfuseModule", "decode_image_b64",
    "preprocess_image", "to_pil",
]
