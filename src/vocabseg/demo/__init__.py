"""The web demo of ``vocabseg demo``: ``app`` (the Gradio page) and ``callbacks`` (its work, no Gradio)."""
