"""mpnp-edge: an edge runtime for modality plug-and-play multimodal LLMs on vehicles and robots.

The core package never imports ROS; `ros_nodes/` adapts it to rclpy.
"""

__version__ = "0.1.0"
