"""Camera rendering and projection: images, segmentation, and world points → pixels.

Rendering goes through `mujoco.Renderer` with shadows, multisampling and reflections off: on a
CPU (Mesa llvmpipe) a 4096² shadow map alone makes a 128² frame ~40x slower, and none of them is
something a policy needs.
Collision geoms (group 0) are hidden, as robosuite does, so cameras see the visual meshes only.
"""

from __future__ import annotations

import weakref

import mujoco
import numpy as np


class CameraRig:
    """Renders named cameras of one model at one resolution; images are upright (row 0 = top)."""

    def __init__(self, model: mujoco.MjModel, height: int, width: int) -> None:
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        self.model = model
        self.height, self.width = height, width
        self.renderer = mujoco.Renderer(model, height, width)
        # Free the GL context at interpreter exit while EGL is still loaded (otherwise the
        # renderer's destructor runs after EGL teardown and prints errors).
        self._finalizer = weakref.finalize(self, self.renderer.close)
        self.options = mujoco.MjvOption()
        self.options.geomgroup[0] = 0  # collision geoms
        # Mirror reflections (the table) re-render the scene, and the skybox is never seen by the
        # cameras; both cost several times a frame on a CPU.
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """uint8 (H, W, 3)."""
        self.renderer.update_scene(data, camera=camera, scene_option=self.options)
        return self.renderer.render().copy()

    def segment(
        self,
        data: mujoco.MjData,
        camera: str,
        object_type: mujoco.mjtObj = mujoco.mjtObj.mjOBJ_GEOM,
    ) -> np.ndarray:
        """Id of the geom (or site, ...) seen at each pixel, (H, W) int32; -1 elsewhere."""
        self.renderer.enable_segmentation_rendering()
        try:
            self.renderer.update_scene(data, camera=camera, scene_option=self.options)
            ids = self.renderer.render()
        finally:
            self.renderer.disable_segmentation_rendering()
        return np.where(ids[..., 1] == int(object_type), ids[..., 0], -1).astype(np.int32)

    def close(self) -> None:
        self._finalizer()


def project(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    camera: str,
    points: np.ndarray,
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2) as (x, y) = (column, row) of world points (N, 3), and a mask of the
    points in front of the camera. Pinhole model with MuJoCo's vertical field of view."""
    camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if camera_id < 0:
        raise KeyError(f"no camera named {camera!r} in the model")
    position = data.cam_xpos[camera_id]
    rotation = data.cam_xmat[camera_id].reshape(3, 3)  # columns: camera x (right), y (up), z (back)
    local = (np.asarray(points, dtype=np.float64) - position) @ rotation  # (N, 3) in camera axes
    depth = -local[:, 2]  # the camera looks along its -z
    focal = (height / 2) / np.tan(np.deg2rad(model.cam_fovy[camera_id]) / 2)
    safe_depth = np.where(depth > 1e-6, depth, 1e-6)
    column = width / 2 + focal * local[:, 0] / safe_depth
    row = height / 2 - focal * local[:, 1] / safe_depth
    return np.stack([column, row], axis=1), depth > 1e-6
