"""Cross-frame attention (Text2Video-Zero): every frame's self-attention reads the keys and values of its first frame.

Usage (the reference's recipes, with any image UNet or ControlNet)::

    from vidiff.pipelines.text_to_video_synthesis.pipeline_text_to_video_zero import CrossFrameAttnProcessor
    pipe.unet.set_attn_processor(CrossFrameAttnProcessor(batch_size=2))   # 2 = [uncond, cond] with guidance

The UNet batch is read as ``batch_size`` groups of frames, ``(batch_size frames) n c``; self-attention keys and values
of each group are replaced by those of the group's first frame. Cross-attention (to the text) is unchanged.
"""

from __future__ import annotations

import torch

from .attention import Attention, _finish, _flatten_input, _project_qkv
from ..runtime.attention import scaled_dot_product_attention as sdpa


def first_frame_kv(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(batch_size * frames, n, c) -> the same shape with every frame replaced by the first frame of its group."""
    rows = tensor.shape[0]
    if rows < batch_size:  # fewer rows than groups: each row is its own one-frame group (reference behaviour)
        return tensor
    check_groups(rows, batch_size)
    frames = rows // batch_size
    grouped = tensor.reshape(batch_size, frames, *tensor.shape[1:])  # b f n c
    return grouped[:, :1].expand_as(grouped).reshape(tensor.shape)  # (b f) n c


def check_groups(rows: int, batch_size: int) -> None:
    """A UNet batch of ``rows`` must be ``batch_size`` groups of frames."""
    if rows % batch_size:
        raise ValueError(
            f"CrossFrameAttnProcessor(batch_size={batch_size}) got a UNet batch of {rows}, which is not batch_size x "
            f"frames. batch_size counts the copies of the video in one UNet call: 2 with classifier-free guidance, "
            f"1 without, 3 for InstructPix2Pix with guidance; set it to match your call."
        )


class _CrossFrameBase:
    def __init__(self, batch_size: int = 2):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer (copies of the video per UNet call), got {batch_size!r}")
        self.batch_size = batch_size

    def _qkv(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None):
        query, key, value = _project_qkv(attn, hidden_states, encoder_hidden_states)
        if encoder_hidden_states is None:  # self-attention: attend to the first frame
            key, value = first_frame_kv(key, self.batch_size), first_frame_kv(value, self.batch_size)
        return query, key, value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_size={self.batch_size})"


class CrossFrameAttnProcessor(_CrossFrameBase):
    """Cross-frame attention with explicit scores (``attn.get_attention_scores``, honours upcasting)."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        hidden_states, shape4d = _flatten_input(attn, hidden_states)
        b, seq_len, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, b)
        query, key, value = (attn.head_to_batch_dim(t) for t in self._qkv(attn, hidden_states, encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (b heads) n_q n_k
        return _finish(attn, attn.batch_to_head_dim(torch.bmm(probs, value)), residual, shape4d)


class CrossFrameAttnProcessor2_0(_CrossFrameBase):
    """Cross-frame attention through ``torch.nn.functional.scaled_dot_product_attention``.

    Shares context (``shares_context``, as :class:`~vidiff.layers.attention.AttnProcessor2_0`): the cross-attention
    may get one text context per group of consecutive rows (one per copy of the video, as the Text2Video-Zero
    pipeline passes it); keys and values are projected once per context and the group's frames attend as one query
    sequence, the same sums as a context repeated per frame."""

    shares_context = True

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        hidden_states, shape4d = _flatten_input(attn, hidden_states)
        batch, n_q, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        groups, seq_len, _ = context.shape  # rows of keys and values
        if attention_mask is not None:  # (Attention.forward repeats a shared context when there is a mask)
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, groups)
            attention_mask = attention_mask.view(groups, attn.heads, -1, attention_mask.shape[-1])  # b heads n_q n_k
        if encoder_hidden_states is None and attention_mask is None and attn.group_norm is None and batch >= self.batch_size:
            # keys and values of the first frames only; a group's frames attend as one query sequence
            check_groups(batch, self.batch_size)
            groups = self.batch_size
            first = hidden_states.reshape(groups, batch // groups, *hidden_states.shape[1:])[:, 0]  # groups n c
            query, key, value = attn.to_q(hidden_states), attn.to_k(first), attn.to_v(first)
        else:
            query, key, value = self._qkv(attn, hidden_states, encoder_hidden_states)
        head_dim = query.shape[-1] // attn.heads
        query, key, value = (t.view(groups, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = sdpa(query, key, value, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, n_q, attn.heads * head_dim).to(query.dtype)  # b n (heads d)
        return _finish(attn, out, residual, shape4d)
