"""Review and correct an edit plan on the canvas: the artist's corrections (plain JSON in the
ContextEdit Review Plan node's ``corrections`` widget) applied to the plan, keyed so that a
correction can never land on the wrong instruction or image."""
