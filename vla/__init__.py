"""The policy: VLM backbone, action expert, reasoning, caching, policy API, checkpoints, serving.

`vla` never imports `sim`: the policy only sees observation dicts, which is what makes a
checkpoint deployable on a real robot. (The model lands with its own issue.)
"""
