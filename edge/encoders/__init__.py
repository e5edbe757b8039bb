"""Modality encoders (fisheye, ultrasonic, audio, front camera: the built-in plugins' encoders), the perception stack
that builds one per installed modality plugin, and the BEV fusion head; see docs/perception.md and docs/plugins.md.

Encoders depend on kernels and sensor models only, never on the runtime.
"""

from edge.encoders.audio import AudioEncoder, audio_features
from edge.encoders.base import D_ENC, BevFeatures, Cost, Diagnostics, EncoderOutput, InputError, ModalityEncoder
from edge.encoders.camera import CameraEncoder
from edge.encoders.config import AUDIO_EVENTS, BEV_CLASSES, DIRECTIONS, LIGHTING, PerceptionConfig
from edge.encoders.fisheye import FisheyeEncoder
from edge.encoders.fusion import BevFusionHead, BevInput
from edge.encoders.stack import CheckpointError, PerceptionOutput, PerceptionStack
from edge.encoders.ultrasonic import UltrasonicEncoder

__all__ = [
    "AUDIO_EVENTS", "BEV_CLASSES", "D_ENC", "DIRECTIONS", "LIGHTING", "AudioEncoder", "BevFeatures", "BevFusionHead",
    "BevInput", "CameraEncoder", "CheckpointError", "Cost", "Diagnostics", "EncoderOutput", "FisheyeEncoder",
    "InputError", "ModalityEncoder", "PerceptionConfig", "PerceptionOutput", "PerceptionStack", "UltrasonicEncoder",
    "audio_features",
]
