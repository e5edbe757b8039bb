"""A recorded drive through the runtime: `edge replay` -> `edge node`, the node on the replay's /clock.

    ros2 launch mpnp_edge drive.launch.py bag:=/data/drives/day_to_night rate:=1.0 llm:=true

The node starts first; the replay starts when the node reports its subscriptions (loading the perception models
and the LLM takes a while, and best-effort sensor data published before then would be lost), then waits `delay`
seconds for discovery. The launch ends if the node exits. Arguments: those of replay.launch.py and
runtime.launch.py, with use_sim_time true and delay 2 s (ros_nodes/launch_commands.py).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessIO
from launch.substitutions import LaunchConfiguration

from ros_nodes.launch_commands import (DRIVE_ARGUMENTS, RUNTIME_READY, ReadyWatch, replay_command,
                                       runtime_command)


def _start(context):
    values = {name: LaunchConfiguration(name).perform(context) for name in DRIVE_ARGUMENTS}
    node = ExecuteProcess(cmd=runtime_command(values), name="edge_node", output="screen",
                          on_exit=Shutdown(reason="edge node exited"))
    replay = ExecuteProcess(cmd=replay_command(values), name="edge_replay", output="screen")
    ready = ReadyWatch(RUNTIME_READY)
    start_replay = OnProcessIO(target_action=node,
                               on_stderr=lambda event: [replay] if ready.feed(event.text) else None)
    return [node, RegisterEventHandler(start_replay)]


def generate_launch_description():
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=a.default, description=a.description, choices=a.choices)
          for name, a in DRIVE_ARGUMENTS.items()),
        OpaqueFunction(function=_start),
    ])
