"""Synthetic talking-head clips from real registry photos, for the demo model (docs/demo_data.md).

photos.py     registry face photos with identities (`sample_photos`)
facemesh.py   MediaPipe's 3D face mesh and the indices of the moving parts
rig.py        photo -> framed image + control points over the whole frame + triangles
expressions.py jaw, smile and blink displacement fields
motion.py     `HeadMotion` per frame and smooth random curves of it (`random_motion`)
warp.py       depth-ordered piecewise-affine warp (one dense map, one remap)
animator.py   `HeadAnimator`: rig once per photo, `render(HeadMotion)` per frame
clips.py      `make_clip`: random motion -> mp4
demo_set.py   `make_demo_set`: every photo's clips, split by identity, with clips.json

Submodules are imported explicitly; nothing here loads MediaPipe until a photo is rigged.
"""
