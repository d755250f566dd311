"""Serving a policy to a robot: wire codec, websocket server, client, controller-side safety.

Nothing here is imported eagerly: `vla.client` and the controller (`vla.deploy`) run on robot
computers without torch, so only `vla.serving.server` may import the model.
"""
