"""LiDAR for mpnp-edge, plugged in from outside the core (entry point `edge.modalities`: lidar).

Importing the package stays light (the plugin declaration needs neither torch nor the kernels); the op, the
encoder and the simulator are imported by the core through the "module:callable" references the plugin names.
"""
