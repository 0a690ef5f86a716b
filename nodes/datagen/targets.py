"""The object filter before inpainting: is a detected object a sensible edit target?

InsightEdit's pipeline asks its language model once per detected object (the image caption, the
object's class name and detailed caption; ``1_3_1_remove_add_filter(optional).py``, and the same
call inside ``3_1_remove_add_construction.py`` / ``3_2_replace_construction.py``) and inpaints only
the objects whose answer ``flag`` is not 0: a "natural landscape", the sky, a worn scarf or "the
view" are not edit targets. Our VLM gets the same three texts (prompts.FILTER_PROMPT, our wording)
and also sees the image. A reply without a readable flag raises UnreadableReply, so the item goes
to the failure log and is asked again on the next run (the repo drops the image's file then).
"""

from __future__ import annotations

import math

from ..executability.lenient_json import find_values
from .annotate import UnreadableReply
from .prompts import filter_prompt

FILTER_MAX_NEW_TOKENS = 32


def parse_filter_reply(reply: str) -> bool:
    """True unless the reply's ``flag`` is 0 (the repo keeps an object when ``flag != 0``)."""
    text = reply.rsplit("</think>", 1)[-1] if "</think>" in reply else reply
    for found in find_values(text):
        if isinstance(found.value, dict):
            lowered = {str(k).casefold(): v for k, v in found.value.items()}
            flag = lowered.get("flag")
            if isinstance(flag, bool):
                return flag
            if isinstance(flag, (int, float)) and math.isfinite(flag):
                return flag != 0
            if isinstance(flag, str) and flag.strip() in ("0", "1"):
                return flag.strip() == "1"
    raise UnreadableReply("filter", "the reply has no \"flag\": 0 or 1.", reply)


def ask_edit_target(vlm, image, img_caption: str, annotation: dict) -> tuple[bool, str]:
    """(is an edit target, raw reply) for one detected object."""
    prompt = filter_prompt(img_caption, annotation["class_name"], annotation.get("detailed_caption", ""))
    reply = vlm.generate(image, prompt, max_new_tokens=FILTER_MAX_NEW_TOKENS).text
    return parse_filter_reply(reply), reply
