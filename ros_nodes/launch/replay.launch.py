"""Replay a recorded drive on ROS 2 topics with /clock: starts `edge replay` (ros_nodes/replay.py).

    ros2 launch mpnp_edge replay.launch.py bag:=/data/drives/day_to_night rate:=0.5 loop:=true topics:=/odom

Each argument maps to one option of `edge replay` (table in ros_nodes/launch_commands.py; `--show-args` lists them).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from ros_nodes.launch_commands import REPLAY_ARGUMENTS, replay_command


def _start(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in REPLAY_ARGUMENTS}
    return [ExecuteProcess(cmd=replay_command(values), name="edge_replay", output="screen")]


def generate_launch_description():
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=a.default, description=a.description, choices=a.choices)
          for name, a in REPLAY_ARGUMENTS.items()),
        OpaqueFunction(function=_start),
    ])
