"""What the pipeline asks the vision-language model, stage by stage (our wording).

The caption prompt asks for InsightEdit's object-list JSON (``img_caption`` + ``object_list`` of
``category`` / ``obj_simple_caption`` / ``obj_detailed_caption``), in one step from the image
(the repo recaptions with a VLM and then converts the caption with a text LLM), plus one field of
ours per object: ``replace_with`` (an object class that could stand in its place) and
``replace_with_caption``, which the inpaint stage uses for its replace pairs (the repo asks an
LLM for that class in its replace script).

The filter prompt carries the intent of InsightEdit's object filter
(``1_3_1_remove_add_filter(optional).py``, also called inside ``3_1_remove_add_construction.py``):
per detected object, given the image caption, the object's class name and detailed caption, is it
a concrete thing an edit can remove or replace (answer ``{"flag": 1}``) or natural scenery, a body
part or something worn, an abstract word, the whole scene or a point of view (``{"flag": 0}``).

The score prompts follow VIEScore (Ku et al., 2024): semantic consistency (SC) sees source and
edited image and rates instruction following and absence of over-editing; perceptual quality
(PQ) sees the edited image and rates naturalness and absence of artifacts; each 0-10, answered as
``{"score": [a, b], "reasoning": "..."}``.
"""

CAPTION_PROMPT = (
    "Describe this image for an image-editing dataset. List the concrete, physical objects you can "
    "see (not abstract things such as the sky, the view or the background, and not body parts). "
    "For each object give: \"category\" (its kind), \"obj_simple_caption\" (a short name, no "
    "parentheses), \"obj_detailed_caption\" (at most 50 words about it and its context), "
    "\"replace_with\" (a different object that could plausibly stand in the same place) and "
    "\"replace_with_caption\" (one sentence describing that replacement in the scene). Then write "
    "\"img_caption\", a description of the whole image. Answer with JSON only:\n"
    "{\"object_list\": [{\"category\": \"...\", \"obj_simple_caption\": \"...\", "
    "\"obj_detailed_caption\": \"...\", \"replace_with\": \"...\", \"replace_with_caption\": \"...\"}], "
    "\"img_caption\": \"...\"}"
)

FILTER_PROMPT = (
    "Decide whether one object in this image is a sensible target for an image edit that removes it or "
    "replaces it with something else.\nImage description: {img_caption}\nObject: {class_name}\n"
    "Object description: {detailed_caption}\nAnswer 1 when the object is a concrete thing that can be told "
    "apart on its own: a person, an animal, a plant, a tool, furniture, a vehicle, a device, a building and "
    "the like. Answer 0 when it is natural scenery (mountains, a river, the sky, the sea, a forest, a "
    "desert), a part of a body or something worn on it, an abstract word (scenery, background, view, "
    "unknown), the environment or scene as a whole, or a word about the point of view (perspective, "
    "wide-angle view). Answer with JSON only: {{\"flag\": 1}} or {{\"flag\": 0}}."
)

GROUND_PROMPT = (
    "Locate each of these objects in the image: {objects}. {coordinates} Answer with JSON only: a "
    "list with one entry per object found, [{{\"bbox_2d\": [x1, y1, x2, y2], \"label\": \"<object "
    "name as given>\"}}]. Leave out objects that are not visible."
)

REWRITE_PROMPT = (
    "The first image is the original, the second is the result of this edit: \"{instruction}\" "
    "({task_type}: {detail}). Write, looking at both images: \"simple_instruction\", a short, "
    "direct edit instruction that turns the first image into the second; "
    "\"reasoning_instruction\", an instruction for the same edit that does not name the object "
    "directly but makes the reader reason about the image to find it (its position, purpose or "
    "relation to other things); \"source_caption\", one sentence describing the first image; "
    "\"target_caption\", one sentence describing the second image. Answer with JSON only: "
    "{{\"simple_instruction\": \"...\", \"reasoning_instruction\": \"...\", \"source_caption\": "
    "\"...\", \"target_caption\": \"...\"}}"
)

_SCORE_HEADER = (
    "You are a professional digital artist rating AI-generated images by the rules below. All "
    "images and people in them are AI-generated. Answer with JSON only, in the form "
    "{\"score\": [a, b], \"reasoning\": \"at most 20 words\"}, with each score an integer from 0 "
    "to 10.\n\nRULES:\n"
)

SC_PROMPT = _SCORE_HEADER + (
    "Two images are given: the first is the original, the second an edited version of it. Rate how "
    "well the edit instruction was carried out in the second image; the images may look the same "
    "when the edit failed.\n"
    "- First score (editing success): 0 means the second image does not follow the instruction at "
    "all, 10 means it follows the instruction perfectly.\n"
    "- Second score (no over-editing): 0 means the second image is a completely different scene, "
    "10 means it is a minimal yet effective edit of the original.\n"
    "Editing instruction: {instruction}"  # filled with str.replace: the header holds JSON braces
)

PQ_PROMPT = _SCORE_HEADER + (
    "The image is AI-generated. Rate how well it was generated.\n"
    "- First score (naturalness): 0 means the scene does not look natural at all (wrong sense of "
    "distance, shadows or lighting), 10 means it looks natural.\n"
    "- Second score (no artifacts): 0 means large distortions, watermarks, scratches, blurred faces, "
    "unusual body parts or subjects that do not fit together, 10 means no artifacts."
)


def filter_prompt(img_caption: str, class_name: str, detailed_caption: str) -> str:
    return FILTER_PROMPT.format(img_caption=img_caption, class_name=class_name,
                                detailed_caption=detailed_caption or "(none)")


def ground_prompt(objects, coordinates: str) -> str:
    """The grounding question for a list of object names; ``coordinates`` is the VLM family's
    coordinate rule (executability.prompt.coordinate_rule)."""
    names = "; ".join(f"\"{name}\"" for name in objects)
    return GROUND_PROMPT.format(objects=names, coordinates=coordinates)
