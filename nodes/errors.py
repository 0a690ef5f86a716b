"""The pack's own exception types.

Every error a user can cause says which input is wrong, what was expected and what to do; nodes
raise these (ComfyUI shows the message in the UI and in /history), tests assert on them.
"""


class ContextEditError(Exception):
    """Base class of every error the pack raises on purpose."""


class InputError(ContextEditError, ValueError):
    """A node input (or an engine argument) is unusable.

    ``input_name`` names the offending input so callers and tests can tell which one it was.
    """

    def __init__(self, input_name: str, problem: str, fix: str):
        self.input_name = input_name
        self.problem = problem
        self.fix = fix
        super().__init__(f"Input '{input_name}': {problem} {fix}".strip())


class ModelNotFoundError(ContextEditError, FileNotFoundError):
    """A model name could not be resolved to a file or folder in ComfyUI's model folders.

    ``source`` (from the model catalogue, nodes/model_catalog.py) says where to download the model,
    or how to make it; ``headline`` replaces the first sentence (e.g. "No LLM model is installed.").
    """

    def __init__(self, kind: str, name: str, searched: list, expected: str, source: str = None,
                 headline: str = None):
        self.kind = kind
        self.name = name
        self.searched = list(searched)
        self.expected = expected
        self.source = source
        where = ", ".join(self.searched) if self.searched else "(no folder registered)"
        first = headline or f"{kind} model '{name}' was not found."
        get = f" {source}" if source else ""
        yaml_key = str(kind).split(" or ")[0]
        super().__init__(
            f"{first} Searched: {where}. Expected {expected}.{get} Put it in one of the searched folders "
            f"(or add a '{yaml_key}:' entry to extra_model_paths.yaml) and refresh the node list."
        )


class PlanParseError(ContextEditError, ValueError):
    """An edit plan (JSON text, or a vision-language model's reply) could not be read.

    ``field`` names the offending field as a path such as ``items[2].boxes[0]`` when one field is
    to blame, and is ``None`` when the text as a whole is unreadable.
    """

    def __init__(self, problem: str, field=None, fix: str = ""):
        self.problem = problem
        self.field = field
        self.fix = fix
        where = f"field '{field}': " if field else ""
        super().__init__(f"Edit plan {where}{problem} {fix}".strip())
