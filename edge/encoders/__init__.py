"""Modality encoder plugins (fisheye, ultrasonic, audio, front camera) and BEV fusion; see docs/perception.md.

Encoders depend on kernels and sensor models only, never on the runtime.
"""

from edge.encoders.audio import AudioEncoder, audio_features
from edge.encoders.base import D_ENC, Cost, Diagnostics, InputError
from edge.encoders.camera import CameraEncoder
from edge.encoders.config import AUDIO_EVENTS, BEV_CLASSES, DIRECTIONS, LIGHTING, PerceptionConfig
from edge.encoders.fisheye import FisheyeEncoder
from edge.encoders.fusion import BevFusionHead
from edge.encoders.stack import CheckpointError, PerceptionOutput, PerceptionStack
from edge.encoders.ultrasonic import UltrasonicEncoder

__all__ = [
    "AUDIO_EVENTS", "BEV_CLASSES", "D_ENC", "DIRECTIONS", "LIGHTING", "AudioEncoder", "BevFusionHead",
    "CameraEncoder", "CheckpointError", "Cost", "Diagnostics", "FisheyeEncoder", "InputError", "PerceptionConfig",
    "PerceptionOutput", "PerceptionStack", "UltrasonicEncoder", "audio_features",
]
