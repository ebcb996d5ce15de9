"""Plain-Python CollabLLM method (user simulator, forward sampling, MR, datasets, TRL training).

Filled in by the training issue; never imports Django.
"""
