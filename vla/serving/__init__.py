"""Serving a policy to robots: the torch side, `vla.serving.server` (websocket server, batching).

Everything the robot computer runs — client, wire protocol, msgpack codec, controller,
stitching, safety — is `vla.robot`, which never imports torch; the server imports its protocol
and codec from there, so both ends share one definition of the wire.
"""
