"""Thin rclpy adapters over the `edge` runtime (the only place that imports rclpy)."""
