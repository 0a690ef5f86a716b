"""Executability check (CAMILA-style): which instructions can be carried out on an image, and
where. The engine is plain Python: ``plan`` (EditPlan data), ``instructions`` (splitting),
``prompt`` (what we ask the VLM), ``reply_parser`` (reading its answer), ``box_coords``
(model box conventions -> source pixels). Only ``node.py`` talks to ComfyUI."""
