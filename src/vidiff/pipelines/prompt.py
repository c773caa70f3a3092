"""CLIP prompt encoding shared by every text-conditioned pipeline."""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger("vidiff")


def prompt_batch_size(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> int:
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return prompt_embeds.shape[0]


def check_prompt_inputs(prompt: Any, negative_prompt: Any, prompt_embeds: Any, negative_prompt_embeds: Any) -> None:
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("pass either `prompt` or `prompt_embeds`, not both")
    if prompt is None and prompt_embeds is None:
        raise ValueError("pass `prompt` (text) or `prompt_embeds` (a tensor); both are missing")
    if prompt is not None and not isinstance(prompt, (str, list)):
        raise TypeError(f"`prompt` must be a str or a list of str, got {type(prompt).__name__}")
    if isinstance(prompt, list) and (not prompt or not all(isinstance(p, str) for p in prompt)):
        raise TypeError("`prompt` as a list must be a non-empty list of str")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass either `negative_prompt` or `negative_prompt_embeds`, not both")
    if prompt_embeds is not None and negative_prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
        raise ValueError(
            f"`prompt_embeds` {tuple(prompt_embeds.shape)} and `negative_prompt_embeds` {tuple(negative_prompt_embeds.shape)} must have the same shape"
        )
    for name, t in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.ndim != 3):
            raise ValueError(f"`{name}` must be a 3-D tensor (batch, tokens, dim)")
    if negative_prompt is not None and prompt is not None:
        if type(prompt) is not type(negative_prompt):
            raise TypeError(f"`negative_prompt` must be the same type as `prompt` ({type(prompt).__name__}), got {type(negative_prompt).__name__}")
        if isinstance(prompt, list) and len(prompt) != len(negative_prompt):
            raise ValueError(f"`negative_prompt` has {len(negative_prompt)} entries but `prompt` has {len(prompt)}")


def _run_text_encoder(text_encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, device, clip_skip: int | None) -> torch.Tensor:
    input_ids = input_ids.to(device)
    if clip_skip is None:
        return text_encoder(input_ids, attention_mask=attention_mask)[0]
    out = text_encoder(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = out[-1][-(clip_skip + 1)]
    # transformers < 5 keeps the final norm under .text_model; transformers 5 puts it on the model itself
    final_norm = getattr(getattr(text_encoder, "text_model", text_encoder), "final_layer_norm")
    return final_norm(hidden)


def _tokenize(tokenizer, texts: list[str], max_length: int) -> Any:
    return tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")


def _mask(text_encoder, tokens: Any, device) -> torch.Tensor | None:
    if getattr(text_encoder.config, "use_attention_mask", False):
        return tokens.attention_mask.to(device)
    return None


def encode_prompt(
    tokenizer,
    text_encoder,
    prompt: str | list[str] | None,
    device: torch.device,
    num_per_prompt: int,
    do_classifier_free_guidance: bool,
    negative_prompt: str | list[str] | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    clip_skip: int | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (prompt_embeds, negative_prompt_embeds), each repeated ``num_per_prompt`` times.

    Same tokenisation, truncation, clip_skip and dtype rules as the reference's ``encode_prompt``.
    """
    batch_size = prompt_batch_size(prompt, prompt_embeds)
    if prompt_embeds is None:
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        tokens = _tokenize(tokenizer, texts, tokenizer.model_max_length)
        untruncated = tokenizer(texts, padding="longest", return_tensors="pt").input_ids
        if untruncated.shape[-1] >= tokens.input_ids.shape[-1] and not torch.equal(tokens.input_ids, untruncated):
            removed = tokenizer.batch_decode(untruncated[:, tokenizer.model_max_length - 1 : -1])
            logger.warning("part of the prompt was truncated (CLIP takes %d tokens): %s", tokenizer.model_max_length, removed)
        prompt_embeds = _run_text_encoder(text_encoder, tokens.input_ids, _mask(text_encoder, tokens, device), device, clip_skip)

    if dtype is None:
        dtype = text_encoder.dtype if text_encoder is not None else prompt_embeds.dtype
    prompt_embeds = repeat_embeds(prompt_embeds.to(dtype=dtype, device=device), num_per_prompt)

    if do_classifier_free_guidance and negative_prompt_embeds is None:
        if negative_prompt is None:
            uncond = [""] * batch_size
        elif isinstance(negative_prompt, str):
            uncond = [negative_prompt]
        else:
            uncond = list(negative_prompt)
        if len(uncond) != batch_size:
            raise ValueError(f"`negative_prompt` has {len(uncond)} entries but the batch has {batch_size} prompts")
        tokens = _tokenize(tokenizer, uncond, prompt_embeds.shape[1])
        negative_prompt_embeds = text_encoder(tokens.input_ids.to(device), attention_mask=_mask(text_encoder, tokens, device))[0]
    if do_classifier_free_guidance:
        negative_prompt_embeds = repeat_embeds(negative_prompt_embeds.to(dtype=dtype, device=device), num_per_prompt)
    return prompt_embeds, negative_prompt_embeds


def repeat_embeds(embeds: torch.Tensor, n: int) -> torch.Tensor:
    """(b, s, d) -> (b*n, s, d), each item repeated n times in place (reference order)."""
    b, s, d = embeds.shape
    return embeds.repeat(1, n, 1).view(b * n, s, d)


class PromptEncoderMixin:
    """``encode_prompt`` of the SD-family pipelines (same signature as the reference's) over ``self.tokenizer`` and
    ``self.text_encoder``; embeddings take the text encoder's dtype (the UNet's when only embeddings are given)."""

    def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None,
                      prompt_embeds=None, negative_prompt_embeds=None, lora_scale=None, clip_skip=None):
        """(prompt_embeds, negative_prompt_embeds), each repeated ``num_images_per_prompt`` times. ``lora_scale`` scales
        text-encoder LoRAs, which vidiff does not load, so it has nothing to act on."""
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        return encode_prompt(self.tokenizer, self.text_encoder, prompt, device, num_images_per_prompt,
                             do_classifier_free_guidance, negative_prompt, prompt_embeds, negative_prompt_embeds,
                             clip_skip=clip_skip, dtype=dtype)
