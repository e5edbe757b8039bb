"""`edge calibrate`: intrinsics and extrinsics from checkerboard / ChArUco views, calibration file formats
(ROS camera_info, Kalibr camchain) to and from the rig YAML, and checks of a rig against a drive.

One module per job: `boards` (targets and detection), `sources` (images from a folder or a bag), `intrinsics`
(robust solve), `coverage` (what the views covered, the coverage picture), `extrinsics` (poses in base_link),
`formats` (camera_info / camchain files), `rigio` (rig YAML in and out), `check` (a rig against a drive),
`synthetic` (rendered views with exact truth), `cli` (the command).
"""
