"""The mPnP runtime as a ROS 2 node on live or replayed sensor topics: starts `edge node` (ros_nodes/runtime_node.py).

    ros2 launch mpnp_edge runtime.launch.py policy:=adaptive budget_ms:=100 llm:=false

Each argument maps to one option of `edge node`, except use_sim_time, the ROS parameter handed to the node in its
--ros-args block (table in ros_nodes/launch_commands.py; `--show-args` lists them).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from ros_nodes.launch_commands import RUNTIME_ARGUMENTS, runtime_command


def _start(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in RUNTIME_ARGUMENTS}
    return [ExecuteProcess(cmd=runtime_command(values), name="edge_node", output="screen")]


def generate_launch_description():
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=a.default, description=a.description, choices=a.choices)
          for name, a in RUNTIME_ARGUMENTS.items()),
        OpaqueFunction(function=_start),
    ])
