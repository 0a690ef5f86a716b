"""The executability check: instructions + image -> EditPlan, through a vision-language model.

One sentence of CAMILA: for every instruction decide [MASK] (executable, here is where) or [NEG]
(leave it). We split the prompt into instructions, ask the VLM (prompt.build_prompt), and read its
reply with reply_parser.plan_from_reply, which never raises: a reply we cannot read gives a plan
whose items are all non-executable, with the raw reply kept for the report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from ..errors import InputError
from .box_coords import ABSOLUTE
from .instructions import split_instructions
from .plan import EditPlan
from .prompt import build_prompt
from .reply_parser import plan_from_reply
from .vlm_runtime import VLM, to_pil

DEFAULT_MAX_NEW_TOKENS = 512


def instructions_from(text: str | Sequence[str], input_name: str = "instructions") -> list[str]:
    """The instruction list of a prompt (split_instructions), or of a list of strings as given.

    Raises InputError naming ``input_name`` when nothing is left.
    """
    if isinstance(text, str):
        instructions = split_instructions(text)
    elif isinstance(text, (list, tuple)) and all(isinstance(s, str) for s in text):
        instructions = [s.strip() for s in text if s.strip()]
    else:
        raise InputError(input_name, f"must be text, got {type(text).__name__}.",
                         "Type one edit instruction per line.")
    if not instructions:
        raise InputError(input_name, "holds no instruction.",
                         "Type at least one edit instruction, e.g. 'replace the cat with a dog'.")
    return instructions


def _check_vlm(vlm):
    if not isinstance(vlm, VLM):
        raise InputError("vlm", f"expected a loaded vision-language model, got "
                         f"{type(vlm).__name__}.", "Connect the ContextEdit VLM loader's output.")


def _check_instructions_prepared(vlm: VLM, image, instructions: list[str], max_new_tokens: int,
                                 should_stop, on_token) -> tuple[EditPlan, str]:
    pil = to_pil(image)
    size = pil.size  # (width, height)
    convention = vlm.box_convention
    input_size = vlm.model_input_size(pil) if convention == ABSOLUTE else None
    prompt = build_prompt(instructions, convention, input_size)
    result = vlm.generate(pil, prompt, max_new_tokens=max_new_tokens, should_stop=should_stop,
                          on_token=on_token)
    plan = plan_from_reply(result.text, instructions, convention, size,
                           result.model_input_size or input_size)
    if not vlm.family.known:
        plan = dataclasses.replace(plan, notes=plan.notes + (vlm.family.note,))
    return plan, result.text


def check_instructions(vlm: VLM, image, instructions_text, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                       should_stop: Callable[[], bool] | None = None,
                       on_token: Callable[[int, int], None] | None = None) -> tuple[EditPlan, str]:
    """Ask ``vlm`` which instructions are executable on ``image`` -> ``(plan, raw_reply)``.

    ``image``: PIL or [H, W, 3] uint8 / float 0..1. ``instructions_text``: the user's prompt
    (split with split_instructions) or a list of instructions. The plan has one item per
    instruction, in order, boxes in pixels of ``image``; it never fails on a bad reply. Empty
    instructions raise InputError('instructions'). ``should_stop`` / ``on_token``: see
    :meth:`VLM.generate`.
    """
    _check_vlm(vlm)
    instructions = instructions_from(instructions_text)
    return _check_instructions_prepared(vlm, image, instructions, max_new_tokens, should_stop,
                                        on_token)


def check_batch(vlm: VLM, images: torch.Tensor, instructions_text,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                should_stop: Callable[[], bool] | None = None,
                on_token: Callable[[int, int], None] | None = None) -> list[EditPlan]:
    """One plan per image of a ComfyUI IMAGE batch ``[B, H, W, C]`` (0..1), in batch order.

    The same instructions are checked on every image. ``on_token(done, total)`` reports progress
    over the whole batch: ``total = B * max_new_tokens``, and each image's share counts as done
    when it finishes (even if it stopped before its token limit).
    """
    _check_vlm(vlm)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] not in (1, 3, 4) \
            or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError("image", f"must be an IMAGE batch [B, H, W, 3], got {shape}.",
                         "Connect an IMAGE output.")
    instructions = instructions_from(instructions_text)
    batch = int(images.shape[0])
    total = batch * max_new_tokens
    plans = []
    for index in range(batch):
        offset = index * max_new_tokens

        def image_progress(n, _max, offset=offset):
            if on_token is not None:
                on_token(offset + n, total)

        plan, _ = _check_instructions_prepared(vlm, images[index], instructions, max_new_tokens,
                                               should_stop, image_progress)
        plans.append(plan)
        if on_token is not None:
            on_token(offset + max_new_tokens, total)
    return plans
